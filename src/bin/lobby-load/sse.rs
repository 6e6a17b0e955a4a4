//! Server-Sent Events, checked in place as they stream past: only the `id:` and
//! `event:` lines are read, and `data:` only when looking for the probe. The
//! one SSE scanner lobby-load has; hand-written because it must cost less per
//! event than the server it measures spends (both share the machine's cores),
//! and a snapshot's ~1 MB data line is skipped, never kept. `retry:` is read
//! wherever it comes, in a block of its own or in the first event's.

/// The most of one line kept when it spans two reads; enough for every
/// field name and for the data of a `new_user` or `disconnect_user`.
const LINE_CAP: usize = 256;

/// The first byte `\n` in `haystack`, eight bytes at a time: the snapshot's
/// data line is ~1 MB at N = 18,000 and only its end matters.
pub fn find_newline(haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let words = haystack.chunks_exact(8);
    let tail = haystack.len() - words.remainder().len();
    for (n, word) in words.enumerate() {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_ne_bytes(bytes) ^ NEWLINES;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return word.iter().position(|&b| b == b'\n').map(|p| n * 8 + p);
        }
    }
    haystack[tail..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| tail + p)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    #[default]
    None,
    Snapshot,
    NewUser,
    DisconnectUser,
    UserUpdated,
    Other,
}

/// The fields of the event being read.
#[derive(Debug, Clone, Copy, Default)]
struct Block {
    id: Option<u64>,
    kind: Kind,
    data: bool,
    /// The probe's tag, if the data names it.
    probe: u64,
}

/// What one stream has shown so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// The last event id seen.
    pub last_id: Option<u64>,
    /// `existing_users` snapshots (more than one only after a reconnect).
    pub snapshots: u32,
    /// `new_user` and `disconnect_user` events.
    pub events: u64,
    /// Events whose id skipped ahead (some event missing).
    pub gaps: u32,
    /// Events with the same id as the one before.
    pub repeats: u32,
    /// Events with a lower id than the one before.
    pub decreases: u32,
    /// Events with no id, or of a kind the contract does not have.
    pub unexpected: u32,
    /// The tag of the last probe whose `new_user`, `user_updated` and
    /// `disconnect_user` have been seen (0: none yet).
    pub joined_probe: u64,
    pub updated_probe: u64,
    pub left_probe: u64,
}

#[derive(Debug, Clone)]
pub struct Parser {
    /// The start of a line that began in an earlier read.
    partial: [u8; LINE_CAP],
    partial_len: usize,
    /// The partial line is longer than what was kept.
    partial_long: bool,
    block: Block,
    pub tally: Tally,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            partial: [0; LINE_CAP],
            partial_len: 0,
            partial_long: false,
            block: Block::default(),
            tally: Tally::default(),
        }
    }
}

impl Parser {
    /// The same stream's parser on a new connection: what was seen is kept,
    /// a half-read line or event is dropped (the server sends it again).
    pub fn reconnected(self) -> Parser {
        Parser {
            tally: self.tally,
            ..Parser::default()
        }
    }

    /// Reads the next bytes of the stream. `probe` is the tag in the name
    /// `probe-<16 hex digits>` of the user being watched for, or 0.
    pub fn feed(&mut self, mut input: &[u8], probe: u64) {
        while let Some(end) = find_newline(input) {
            let line = &input[..end];
            if self.partial_len == 0 && !self.partial_long {
                line_of(&mut self.block, &mut self.tally, line, probe);
            } else {
                let keep = line.len().min(LINE_CAP - self.partial_len);
                self.partial[self.partial_len..self.partial_len + keep]
                    .copy_from_slice(&line[..keep]);
                self.partial_len += keep;
                let long = self.partial_long || keep < line.len();
                let line = &self.partial[..self.partial_len];
                // A line cut short is only read for its field name.
                let probe = if long { 0 } else { probe };
                line_of(&mut self.block, &mut self.tally, line, probe);
                self.partial_len = 0;
                self.partial_long = false;
            }
            input = &input[end + 1..];
        }
        let keep = input.len().min(LINE_CAP - self.partial_len);
        self.partial[self.partial_len..self.partial_len + keep].copy_from_slice(&input[..keep]);
        self.partial_len += keep;
        self.partial_long |= keep < input.len();
    }
}

fn line_of(block: &mut Block, tally: &mut Tally, line: &[u8], probe: u64) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        dispatch(std::mem::take(block), tally);
        return;
    }
    // The usual spellings first, so most lines cost one comparison.
    let (field, value): (&[u8], &[u8]) = if let Some(value) = line.strip_prefix(b"id: ") {
        (b"id", value)
    } else if let Some(value) = line.strip_prefix(b"event: ") {
        (b"event", value)
    } else if let Some(value) = line.strip_prefix(b"data: ") {
        (b"data", value)
    } else if line[0] == b':' {
        return;
    } else {
        field_and_value(line)
    };
    match field {
        b"id" => block.id = parse_u64(value),
        b"event" => {
            block.kind = match value {
                b"existing_users" => Kind::Snapshot,
                b"new_user" => Kind::NewUser,
                b"disconnect_user" => Kind::DisconnectUser,
                b"user_updated" => Kind::UserUpdated,
                _ => Kind::Other,
            }
        }
        b"data" => {
            block.data = true;
            if probe != 0 && probe_tag(value) == Some(probe) {
                block.probe = probe;
            }
        }
        _ => {}
    }
}

fn field_and_value(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &b""[..]),
    }
}

fn dispatch(block: Block, tally: &mut Tally) {
    // A block with neither data nor an event name (a lone `retry:` or `id:`)
    // dispatches nothing, as in a browser.
    if !block.data && block.kind == Kind::None {
        return;
    }
    let Some(id) = block.id else {
        tally.unexpected += 1;
        return;
    };
    match (block.kind, tally.last_id) {
        (_, None) => {}
        (_, Some(last)) if id == last + 1 => {}
        // A snapshot after a reconnect stands for everything up to its id.
        (Kind::Snapshot, Some(last)) if id >= last => {}
        (_, Some(last)) if id == last => tally.repeats += 1,
        (_, Some(last)) if id < last => tally.decreases += 1,
        (_, Some(_)) => tally.gaps += 1,
    }
    tally.last_id = Some(id);
    match block.kind {
        Kind::Snapshot => tally.snapshots += 1,
        Kind::NewUser => {
            tally.events += 1;
            if block.probe != 0 {
                tally.joined_probe = block.probe;
            }
        }
        Kind::DisconnectUser => {
            tally.events += 1;
            if block.probe != 0 {
                tally.left_probe = block.probe;
            }
        }
        Kind::UserUpdated => {
            tally.events += 1;
            if block.probe != 0 {
                tally.updated_probe = block.probe;
            }
        }
        Kind::None | Kind::Other => tally.unexpected += 1,
    }
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The tag of a `"name":"probe-<16 hex digits>"` in an event's JSON data.
pub fn probe_tag(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"name\":\"probe-";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let hex = data.get(at..at + 16)?;
    if data.get(at + 16) != Some(&b'"') {
        return None;
    }
    let text = std::str::from_utf8(hex).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::{Parser, Tally, find_newline, probe_tag};

    #[test]
    fn newlines_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'x'; len];
                hay[at] = b'\n';
                assert_eq!(find_newline(&hay), Some(at));
            }
            assert_eq!(find_newline(&vec![b'x'; len]), None);
        }
    }

    fn parse(stream: &[u8], piece: usize, probe: u64) -> Tally {
        let mut parser = Parser::default();
        stream.chunks(piece).for_each(|p| parser.feed(p, probe));
        parser.tally
    }

    const SNAPSHOT: &[u8] = b"retry: 500\n\nid: 3\nevent: existing_users\ndata: {\"users\":[]}\n\n";

    #[test]
    fn consecutive_events_after_a_snapshot_are_clean_however_split() {
        let mut stream = SNAPSHOT.to_vec();
        stream.extend_from_slice(
            b":\n\nid: 4\r\nevent: new_user\r\ndata: {\"id\":\"u\",\"name\":\"a\"}\r\n\r\n",
        );
        stream.extend_from_slice(
            b"id: 5\nevent: disconnect_user\ndata: {\"id\":\"u\",\"name\":\"a\"}\n\n",
        );
        for piece in 1..stream.len() {
            let tally = parse(&stream, piece, 0);
            let expected = Tally {
                last_id: Some(5),
                snapshots: 1,
                events: 2,
                ..Tally::default()
            };
            assert_eq!(tally, expected, "split every {piece} bytes");
        }
    }

    #[test]
    fn a_retry_in_the_same_block_as_the_snapshot_is_read_as_a_separate_retry_block_is() {
        let apart = parse(SNAPSHOT, 3, 0);
        let together = b"retry: 1000\nid: 3\nevent: existing_users\ndata: {\"users\":[]}\n\n";
        for piece in 1..together.len() {
            assert_eq!(
                parse(together, piece, 0),
                apart,
                "split every {piece} bytes"
            );
        }
        assert_eq!((apart.last_id, apart.snapshots), (Some(3), 1));
    }

    #[test]
    fn a_gap_a_repeat_and_a_decrease_are_each_counted() {
        let mut stream = SNAPSHOT.to_vec();
        for id in [5, 5, 4] {
            stream
                .extend_from_slice(format!("id: {id}\nevent: new_user\ndata: {{}}\n\n").as_bytes());
        }
        let tally = parse(&stream, 7, 0);
        assert_eq!((tally.gaps, tally.repeats, tally.decreases), (1, 1, 1));
    }

    #[test]
    fn a_long_snapshot_line_split_across_reads_is_skipped_whole() {
        let users = "{\"id\":\"x\",\"name\":\"n\"},".repeat(5000);
        let mut stream =
            format!("id: 9\nevent: existing_users\ndata: {{\"users\":[{users}]}}\n\n").into_bytes();
        stream.extend_from_slice(b"id: 10\nevent: new_user\ndata: {}\n\n");
        let tally = parse(&stream, 4096, 0);
        assert_eq!(
            (tally.last_id, tally.snapshots, tally.events, tally.gaps),
            (Some(10), 1, 1, 0)
        );
    }

    #[test]
    fn a_reconnect_drops_a_half_read_event_and_resumes_after_the_last_id() {
        let mut parser = Parser::default();
        parser.feed(SNAPSHOT, 0);
        parser.feed(b"id: 4\nevent: new_user\ndata: {\"na", 0);
        let mut parser = parser.reconnected();
        parser.feed(b"retry: 500\n\nid: 4\nevent: new_user\ndata: {}\n\n", 0);
        let tally = parser.tally;
        assert_eq!(
            (tally.last_id, tally.events, tally.gaps, tally.repeats),
            (Some(4), 1, 0, 0)
        );
    }

    #[test]
    fn the_probe_is_recognised_by_the_tag_in_its_name() {
        let mut stream = SNAPSHOT.to_vec();
        stream.extend_from_slice(
            b"id: 4\nevent: new_user\ndata: {\"id\":\"u\",\"name\":\"probe-00000000000000ab\"}\n\n",
        );
        assert_eq!(parse(&stream, 5, 0xab).joined_probe, 0xab);
        assert_eq!(parse(&stream, 5, 0xac).joined_probe, 0);
        assert_eq!(probe_tag(b"{\"name\":\"probe-00000000000000ab2\"}"), None);
    }
}
