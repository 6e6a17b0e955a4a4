//! HTTP/1.1 responses, read incrementally: the head, then a body by
//! Content-Length, chunked, or until close, handed on piece by piece. Every
//! response lobby-load reads goes through here, streams included (chunked on
//! HTTP/1.1; until close where a server does not chunk); and a join reply's
//! `id` and `token` are picked out as it passes, without building it.

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// The head, and its length, once `bytes` hold all of it.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        if bytes.len() > 64 * 1024 {
            return Err("a response head over 64 KiB".into());
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut close = status_line.starts_with("HTTP/1.0");
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim().to_ascii_lowercase());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.contains("close");
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some((
        Head {
            status,
            framing,
            close,
        },
        end + 4,
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    /// Reading a chunk-size line: the size so far, whether a digit came, and
    /// whether we are past the digits (in extensions or the line end).
    Size {
        size: u64,
        digits: bool,
        past: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; `empty` while the line has no bytes.
    Trailer {
        empty: bool,
    },
    Done,
}

/// Turns a response body as it arrives into the body's own bytes.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size {
                size: 0,
                digits: false,
                past: false,
            },
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// The body is complete (a body that ends at close never is).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn ends_at_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Hands each piece of body in `input` to `sink`; returns how much of
    /// `input` belonged to this body (all of it unless the body ended).
    pub fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        let mut at = 0;
        while at < input.len() {
            match &mut self.state {
                State::Done => break,
                State::UntilClose => {
                    sink(&input[at..]);
                    at = input.len();
                }
                State::Length(left) | State::Data(left) => {
                    let take = (*left).min((input.len() - at) as u64) as usize;
                    sink(&input[at..at + take]);
                    at += take;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Length(_) => State::Done,
                            _ => State::DataEnd,
                        };
                    }
                }
                State::Size { size, digits, past } => {
                    let byte = input[at];
                    at += 1;
                    match byte {
                        b'\n' if !*digits => return Err("a chunk size line without a size"),
                        b'\n' if *size == 0 => self.state = State::Trailer { empty: true },
                        b'\n' => self.state = State::Data(*size),
                        _ if *past => {}
                        b'\r' | b';' | b' ' | b'\t' => *past = true,
                        _ => {
                            let digit = char::from(byte)
                                .to_digit(16)
                                .ok_or("a chunk size that is not hexadecimal")?;
                            *size = size
                                .checked_mul(16)
                                .map(|s| s + u64::from(digit))
                                .ok_or("a chunk size too large")?;
                            *digits = true;
                        }
                    }
                }
                State::DataEnd => {
                    let byte = input[at];
                    at += 1;
                    match byte {
                        b'\r' => {}
                        b'\n' => {
                            self.state = State::Size {
                                size: 0,
                                digits: false,
                                past: false,
                            }
                        }
                        _ => return Err("chunk data longer than its size"),
                    }
                }
                State::Trailer { empty } => {
                    let byte = input[at];
                    at += 1;
                    match byte {
                        b'\n' if *empty => self.state = State::Done,
                        b'\n' => *empty = true,
                        b'\r' => {}
                        _ => *empty = false,
                    }
                }
            }
        }
        Ok(at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Id,
    Token,
    Other,
}

/// Picks the top-level `"id"` and `"token"` strings out of a join reply as it
/// streams past, without building the (up to ~1 MB) `users` list; nested
/// `"id"`s are skipped by tracking depth. Stops looking once it has both.
#[derive(Debug, Clone)]
pub struct JoinScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    expect_key: bool,
    key: Key,
    text: Vec<u8>,
    pub id: Option<String>,
    pub token: Option<String>,
}

impl Default for JoinScan {
    fn default() -> Self {
        JoinScan {
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: Key::Other,
            text: Vec::new(),
            id: None,
            token: None,
        }
    }
}

impl JoinScan {
    pub fn found(&self) -> bool {
        self.id.is_some() && self.token.is_some()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.found() {
            return;
        }
        for &byte in bytes {
            if self.in_string {
                let top = self.depth == 1;
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                    if top {
                        self.end_string();
                        if self.found() {
                            return;
                        }
                    }
                    continue;
                }
                if top && self.text.len() < 1024 {
                    self.text.push(byte);
                }
                continue;
            }
            match byte {
                b'"' => {
                    self.in_string = true;
                    self.text.clear();
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.expect_key = true;
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b':' if self.depth == 1 => self.expect_key = false,
                b',' if self.depth == 1 => {
                    self.expect_key = true;
                    self.key = Key::Other;
                }
                _ => {}
            }
        }
    }

    fn end_string(&mut self) {
        let text = String::from_utf8_lossy(&self.text).into_owned();
        if self.expect_key {
            self.key = match text.as_str() {
                "id" => Key::Id,
                "token" => Key::Token,
                _ => Key::Other,
            };
            return;
        }
        match self.key {
            Key::Id => self.id = Some(text),
            Key::Token => self.token = Some(text),
            Key::Other => {}
        }
        self.key = Key::Other;
    }
}

#[cfg(test)]
mod tests {
    use super::{Decoder, Framing, JoinScan, parse_head};

    fn decode_in_pieces(framing: Framing, body: &[u8], piece: usize) -> (Vec<u8>, bool) {
        let mut decoder = Decoder::new(framing);
        let mut out = Vec::new();
        for part in body.chunks(piece) {
            decoder
                .feed(part, &mut |bytes| out.extend_from_slice(bytes))
                .expect("valid body");
        }
        (out, decoder.is_done())
    }

    #[test]
    fn a_chunked_body_decodes_the_same_however_it_is_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for piece in 1..wire.len() {
            let (body, done) = decode_in_pieces(Framing::Chunked, wire, piece);
            assert_eq!(body, b"hello, world", "split every {piece} bytes");
            assert!(done);
        }
    }

    #[test]
    fn a_content_length_body_stops_at_its_length_and_leaves_the_rest() {
        let mut decoder = Decoder::new(Framing::Length(3));
        let mut out = Vec::new();
        let used = decoder
            .feed(b"abcHTTP/1.1", &mut |b| out.extend_from_slice(b))
            .expect("valid");
        assert_eq!(
            (used, out.as_slice(), decoder.is_done()),
            (3, &b"abc"[..], true)
        );
    }

    #[test]
    fn a_chunk_longer_than_its_size_is_an_error() {
        let mut decoder = Decoder::new(Framing::Chunked);
        assert!(decoder.feed(b"2\r\nabc\r\n", &mut |_| {}).is_err());
    }

    #[test]
    fn a_head_gives_status_framing_and_length() {
        let bytes = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let (head, len) = parse_head(bytes).expect("valid").expect("complete");
        assert_eq!(
            (head.status, head.framing, head.close),
            (200, Framing::Chunked, false)
        );
        assert_eq!(&bytes[len..], b"rest");
        assert!(
            parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n")
                .expect("valid")
                .is_none()
        );
        let (head, _) = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Length(0));
    }

    #[test]
    fn a_join_reply_gives_its_top_level_id_and_token_not_a_users_id() {
        let reply =
            br#"{"users":[{"id":"nested","name":"x\"y"}],"id":"top","name":"a","token":"secret"}"#;
        for piece in 1..reply.len() {
            let mut scan = JoinScan::default();
            reply.chunks(piece).for_each(|p| scan.feed(p));
            assert_eq!(scan.id.as_deref(), Some("top"), "split every {piece} bytes");
            assert_eq!(scan.token.as_deref(), Some("secret"));
        }
    }
}
