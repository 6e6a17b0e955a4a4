//! Where the server is: its address, the `Host` it answers to, the loopback
//! source addresses connections are spread over, and the three requests
//! lobby-load sends, written by hand.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, anyhow};
use tokio::net::{TcpSocket, TcpStream};

/// Where the server is, and how to open a connection to it.
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as written.
    host: String,
    /// Source addresses to bind, in turn; empty when the server is not on loopback.
    sources: Vec<Ipv4Addr>,
    /// How many rooms the subscribers are spread over: 1 is the lobby's own
    /// routes (`/join`), more are `/rooms/r0/join`, `/rooms/r1/join`, ….
    rooms: usize,
}

impl Target {
    pub async fn from_url(url: &str, sources: u8, rooms: usize) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (got {url:?})"))?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            host.clone()
        } else {
            format!("{host}:80")
        };
        // IPv4 first: `localhost` may resolve to ::1 while the server listens on 127.0.0.1.
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve {with_port}"))?
            .collect();
        addrs.sort_by_key(SocketAddr::is_ipv6);
        let addr = *addrs
            .first()
            .ok_or_else(|| anyhow!("{with_port} resolves to no address"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (0..sources)
                .map(|n| Ipv4Addr::new(127, 0, 0, 2 + n))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target {
            addr,
            host,
            sources,
            rooms: rooms.max(1),
        })
    }

    pub fn rooms(&self) -> usize {
        self.rooms
    }

    /// The routes of room number `room`: the lobby's own with one room.
    fn routes(&self, room: usize) -> String {
        if self.rooms == 1 {
            String::new()
        } else {
            format!("/rooms/r{}", room % self.rooms)
        }
    }

    /// Opens a connection from source address number `source` (modulo their count).
    pub async fn connect(&self, source: usize) -> io::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if !self.sources.is_empty() {
            let ip = self.sources[source % self.sources.len()];
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    pub fn join_request(&self, name: &str, room: usize) -> Vec<u8> {
        let body = format!("{{\"name\":\"{name}\"}}");
        format!(
            "POST {}/join HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.routes(room),
            self.host,
            body.len()
        )
        .into_bytes()
    }

    pub fn leave_request(&self, token: &str, room: usize) -> Vec<u8> {
        format!(
            "POST {}/leave HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n",
            self.routes(room),
            self.host
        )
        .into_bytes()
    }

    /// `POST /state` with `state` (a JSON object) for the holder of `token`.
    pub fn state_request(&self, token: &str, room: usize, state: &str) -> Vec<u8> {
        format!(
            "POST {}/state HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{state}",
            self.routes(room),
            self.host,
            state.len()
        )
        .into_bytes()
    }

    pub fn events_request(&self, token: &str, last_id: Option<u64>, room: usize) -> Vec<u8> {
        let resume = last_id.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
        format!(
            "GET {}/events?token={} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            self.routes(room),
            query_escape(token),
            self.host
        )
        .into_bytes()
    }
}

fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

pub async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}
