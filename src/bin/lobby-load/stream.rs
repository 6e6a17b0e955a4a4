//! One subscriber's GET /events: its connection, the body decoded through
//! `wire` (chunked, or until close for an HTTP/1.0-style stream) and scanned by
//! `sse`. Every stream lobby-load reads goes through here: the ramp's, the
//! followers', and the probe's own.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::subscribers::{Shared, Slot};
use crate::target::{Target, read_some, write_all};
use crate::{sse, wire};

/// The read buffer every subscriber on one runtime thread shares.
pub const STREAM_BUFFER: usize = 64 * 1024;
/// A stream the server keeps ending is given up after this many reconnects.
const MAX_RESUMES: u32 = 100;

/// One subscriber's stream: its connection, the body decoder and the SSE check.
pub struct Stream {
    conn: TcpStream,
    decoder: wire::Decoder,
    pub parser: sse::Parser,
}

impl Stream {
    /// Opens GET /events for `token` (resuming after `last_id` if given) and
    /// scans what came with the response head. Returns the stream and how many
    /// body bytes came with the head.
    pub async fn open(
        target: &Target,
        source: usize,
        room: usize,
        token: &str,
        last_id: Option<u64>,
        buf: &mut [u8],
        parser: sse::Parser,
    ) -> Result<(Stream, u64)> {
        let conn = target
            .connect(source)
            .await
            .context("connect for GET /events")?;
        write_all(&conn, &target.events_request(token, last_id, room)).await?;
        let mut end = 0;
        let (head, len) = loop {
            if let Some(found) = wire::parse_head(&buf[..end]).map_err(|e| anyhow!(e))? {
                break found;
            }
            if end == buf.len() {
                bail!("GET /events: response head too long");
            }
            let n = read_some(&conn, &mut buf[end..]).await?;
            if n == 0 {
                bail!("GET /events: the server closed the connection");
            }
            end += n;
        };
        if head.status != 200 {
            bail!(
                "GET /events answered {}: {}",
                head.status,
                String::from_utf8_lossy(&buf[len..end.min(len + 300)])
            );
        }
        let mut stream = Stream {
            conn,
            decoder: wire::Decoder::new(head.framing),
            parser,
        };
        stream
            .feed(&buf[len..end], 0)
            .map_err(|e| anyhow!("GET /events: {e}"))?;
        Ok((stream, (end - len) as u64))
    }

    /// The body has ended (a chunked one with its last chunk; one that runs
    /// until close ends with the connection instead).
    fn ended(&self) -> bool {
        self.decoder.is_done()
    }

    /// Reads once into `buf` and scans what came, watching for `probe`;
    /// returns how many bytes came, 0 once the stream has ended. A server that
    /// keeps the connection open after the body's end is not waited on.
    pub async fn read(&mut self, buf: &mut [u8], probe: u64) -> Result<usize> {
        if self.ended() {
            return Ok(0);
        }
        let n = read_some(&self.conn, buf).await?;
        self.feed(&buf[..n], probe)
            .map_err(|e| anyhow!("GET /events: {e}"))?;
        Ok(n)
    }

    /// Scans more of the stream; `Ok(true)` once the body has ended.
    fn feed(&mut self, bytes: &[u8], probe: u64) -> Result<bool, &'static str> {
        let parser = &mut self.parser;
        self.decoder
            .feed(bytes, &mut |piece| parser.feed(piece, probe))?;
        Ok(self.ended())
    }
}

/// Closes every subscriber's connection (the server takes them offline after its grace).
pub async fn close(followers: Vec<JoinHandle<()>>) {
    for follower in &followers {
        follower.abort();
    }
    for follower in followers {
        let _ = follower.await;
    }
}

thread_local! {
    /// One read buffer per runtime thread, shared by every subscriber it runs:
    /// an idle subscriber holds no buffer at all.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; STREAM_BUFFER].into_boxed_slice());
}

/// Follows one subscriber's stream until aborted, reopening it with
/// `Last-Event-ID` (as a browser would) when the server ends it.
pub async fn follow(shared: Arc<Shared>, index: usize, token: String, mut stream: Stream) {
    let slot = &shared.slots[index];
    loop {
        let ended = read_until_end(&shared, slot, &mut stream).await;
        if let Err(Some(why)) = ended {
            // Garbled framing: reconnecting would not make it right.
            shared.lose(slot, || why.to_string());
            return;
        }
        let resumes = slot.resumes.fetch_add(1, Relaxed) + 1;
        if resumes > MAX_RESUMES {
            shared.lose(slot, || format!("ended more than {MAX_RESUMES} times"));
            return;
        }
        let mut buf = vec![0; 16 * 1024];
        let last = stream.parser.tally.last_id;
        let parser = std::mem::take(&mut stream.parser).reconnected();
        let room = shared.room_of(index);
        match Stream::open(&shared.target, index, room, &token, last, &mut buf, parser).await {
            Ok((reopened, _)) => stream = reopened,
            Err(err) => {
                shared.lose(slot, || format!("reopening failed: {err:#}"));
                return;
            }
        }
    }
}

/// Reads until the server ends the stream: `Err(None)` for its end, a close
/// or an I/O error, `Err(Some(_))` for a framing error. Reads without waiting
/// while bytes are there, into the thread's shared buffer, and records the
/// tally once per wake-up rather than once per event.
async fn read_until_end(
    shared: &Shared,
    slot: &Slot,
    stream: &mut Stream,
) -> Result<(), Option<&'static str>> {
    while !stream.ended() {
        stream.conn.readable().await.map_err(|_| None)?;
        let ended = READ_BUF.with_borrow_mut(|buf| {
            let probe = shared.probe.load(Relaxed);
            let mut ended = false;
            let mut read = false;
            loop {
                match stream.conn.try_read(buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => {
                        read = true;
                        if stream.feed(&buf[..n], probe).map_err(Some)? {
                            ended = true;
                            break;
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
            if read {
                let target = shared.target_id.load(Relaxed);
                slot.record(&stream.parser.tally, shared.stamp(), target);
            }
            Ok::<bool, Option<&'static str>>(ended)
        })?;
        if ended {
            break;
        }
    }
    Err(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::Stream;
    use crate::sse;
    use crate::target::Target;

    /// A server on a free loopback port that answers one request with
    /// `reply` and then keeps the connection open, as a keep-alive server does.
    async fn answering(reply: &'static [u8]) -> Arc<Target> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("a connection");
            let mut head = [0; 1024];
            let _ = socket.read(&mut head).await;
            socket.write_all(reply).await.expect("the reply");
            std::future::pending::<()>().await;
        });
        Arc::new(Target::from_url(&url, 1, 1).await.expect("a target"))
    }

    #[tokio::test]
    async fn a_chunked_stream_whose_body_ends_on_an_open_connection_reads_as_ended() {
        let target = answering(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
              3c\r\nretry: 1000\nid: 7\nevent: existing_users\ndata: {\"users\":[]}\n\n\r\n\
              0\r\n\r\n",
        )
        .await;
        let mut buf = vec![0; 4096];

        let (mut stream, _) = Stream::open(
            &target,
            0,
            0,
            "token",
            None,
            &mut buf,
            sse::Parser::default(),
        )
        .await
        .expect("the stream opens");
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf, 0))
                .await
                .expect("no wait for a close that never comes")
                .expect("a read");

        assert_eq!(read, 0, "the body has ended");
        let tally = stream.parser.tally;
        assert_eq!((tally.last_id, tally.snapshots), (Some(7), 1));
    }
}
