//! A keep-alive connection for requests (joins and leaves), with its own
//! reused read buffer. Each response is read to the end its head gives
//! (Content-Length or chunked), so a server that keeps the connection open is
//! never waited on for a close; one that closes it is reconnected to.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::TcpStream;

use crate::target::{Target, read_some, write_all};
use crate::wire;

/// Each connection's read buffer; join replies run to ~1 MB.
pub const CONN_BUFFER: usize = 256 * 1024;

/// A keep-alive connection for requests, with its own reused read buffer.
pub struct Conn {
    target: Arc<Target>,
    source: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    pub fn new(target: Arc<Target>, source: usize) -> Conn {
        Conn {
            target,
            source,
            stream: None,
            buf: vec![0; CONN_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Opens the connection now, so that a measured request does not include it.
    pub async fn connect(&mut self) -> Result<()> {
        if self.stream.is_none() {
            let stream = self
                .target
                .connect(self.source)
                .await
                .with_context(|| format!("cannot connect to {}", self.target.addr))?;
            self.stream = Some(stream);
            (self.start, self.end) = (0, 0);
        }
        Ok(())
    }

    /// Sends `request` and hands the response body to `sink`; returns the status.
    /// A reused connection the server had closed before answering is reopened
    /// once, as browsers do.
    async fn request(&mut self, request: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<u16> {
        let reused = self.stream.is_some();
        match self.try_request(request, sink).await {
            Err(Failure::Unanswered(_)) if reused => {
                self.stream = None;
                self.try_request(request, sink)
                    .await
                    .map_err(Failure::into_error)
            }
            result => result.map_err(Failure::into_error),
        }
    }

    async fn try_request(
        &mut self,
        request: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<u16, Failure> {
        self.connect().await.map_err(Failure::Broken)?;
        let result = self.exchange(request, sink).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<u16, Failure> {
        let Some(stream) = &self.stream else {
            return Err(Failure::Broken(anyhow!("not connected")));
        };
        write_all(stream, request)
            .await
            .map_err(|err| Failure::Unanswered(err.into()))?;
        let head = loop {
            if let Some((head, len)) = wire::parse_head(&self.buf[self.start..self.end])
                .map_err(|e| Failure::Broken(anyhow!(e)))?
            {
                self.start += len;
                break head;
            }
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = read_some(stream, &mut self.buf[self.end..])
                .await
                .map_err(|err| Failure::Unanswered(err.into()))?;
            if n == 0 {
                return Err(Failure::Unanswered(anyhow!(
                    "the server closed the connection"
                )));
            }
            self.end += n;
        };
        let mut decoder = wire::Decoder::new(head.framing);
        loop {
            let used = decoder
                .feed(&self.buf[self.start..self.end], sink)
                .map_err(|e| Failure::Broken(anyhow!(e)))?;
            self.start += used;
            if decoder.is_done() {
                break;
            }
            (self.start, self.end) = (0, 0);
            let n = read_some(stream, &mut self.buf)
                .await
                .map_err(|err| Failure::Broken(err.into()))?;
            if n == 0 {
                if decoder.ends_at_close() {
                    break;
                }
                return Err(Failure::Broken(anyhow!(
                    "the server closed the connection mid-body"
                )));
            }
            self.end = n;
        }
        if head.close || !decoder.is_done() {
            self.stream = None;
        }
        Ok(head.status)
    }

    /// POST /join in room number `room`; returns the new user's token (the
    /// reply must also hold its id).
    pub async fn join(&mut self, name: &str, room: usize) -> Result<Joined> {
        let request = self.target.join_request(name, room);
        let mut scan = wire::JoinScan::default();
        let mut error = Vec::new();
        let mut bytes = 0u64;
        let status = self
            .request(&request, &mut |piece| {
                bytes += piece.len() as u64;
                scan.feed(piece);
                let room = 300usize.saturating_sub(error.len()).min(piece.len());
                error.extend_from_slice(&piece[..room]);
            })
            .await?;
        if status != 201 {
            bail!(
                "POST /join answered {status}: {}",
                String::from_utf8_lossy(&error)
            );
        }
        match (scan.id, scan.token) {
            (Some(_id), Some(token)) => Ok(Joined { token, bytes }),
            _ => bail!("POST /join answered 201 without a top-level \"id\" and \"token\""),
        }
    }

    /// POST /leave in room number `room`, with the token as Bearer.
    /// Sets the state of the holder of `token` to `state`, a JSON object.
    pub async fn set_state(&mut self, token: &str, room: usize, state: &str) -> Result<()> {
        let request = self.target.state_request(token, room, state);
        let status = self.request(&request, &mut |_| {}).await?;
        if status != 204 {
            bail!("POST /state answered {status}");
        }
        Ok(())
    }

    pub async fn leave(&mut self, token: &str, room: usize) -> Result<()> {
        let request = self.target.leave_request(token, room);
        let status = self.request(&request, &mut |_| {}).await?;
        if status != 204 {
            bail!("POST /leave answered {status}");
        }
        Ok(())
    }
}

/// Why a request failed: before any answer (safe to retry on a fresh
/// connection) or after.
enum Failure {
    Unanswered(anyhow::Error),
    Broken(anyhow::Error),
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Unanswered(err) | Failure::Broken(err) => err,
        }
    }
}

pub struct Joined {
    pub token: String,
    /// The reply's body size.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::Conn;
    use crate::target::Target;

    #[tokio::test]
    async fn a_join_answered_on_a_connection_kept_open_is_read_to_its_length_and_the_connection_reused()
     {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let reply =
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 44\r\n\r\n\
                      {\"id\":\"u\",\"name\":\"a\",\"token\":\"t\",\"users\":[]}";
        tokio::spawn(async move {
            // One connection, two answers, never closed: a keep-alive server.
            let (mut socket, _) = listener.accept().await.expect("a connection");
            for _ in 0..2 {
                let mut head = [0; 1024];
                let _ = socket.read(&mut head).await;
                socket.write_all(reply).await.expect("the reply");
            }
            std::future::pending::<()>().await;
        });
        let target = Arc::new(Target::from_url(&url, 1, 1).await.expect("a target"));
        let mut conn = Conn::new(target, 0);

        for name in ["a", "b"] {
            let joined = tokio::time::timeout(Duration::from_secs(5), conn.join(name, 0))
                .await
                .expect("no wait for a close that never comes")
                .expect("a join");
            assert_eq!((joined.token.as_str(), joined.bytes), ("t", 44));
        }
    }
}
