//! The JSON list of who is online, cached in pieces. Every join reply, every
//! snapshot and GET /users carry the whole list, so at thousands of users its
//! encoding would dominate; here a join or leave re-encodes only its own piece
//! of at most `PIECE` users, and the list is handed out as those shared pieces
//! (see [`Pieces`]), never assembled into a copy of its own.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use bytes::Bytes;

use super::event::EventId;
use super::name::{Name, UserId, UserState};
use super::pieces::Pieces;

/// Users are grouped by the id of their `new_user` event: ids `k*PIECE ..
/// (k+1)*PIECE` form piece `k`, so pieces stay in join order.
const PIECE: EventId = 128;

#[derive(Debug, Default)]
pub(crate) struct Roster {
    pieces: BTreeMap<EventId, Piece>,
}

#[derive(Debug, Default)]
struct Piece {
    users: usize,
    /// `{"id":…,"name":…},{…}` for this piece's users, while unchanged.
    json: Option<Bytes>,
}

impl Roster {
    /// A user whose `new_user` event is `seq` came online.
    pub(crate) fn added(&mut self, seq: EventId) {
        let piece = self.pieces.entry(seq / PIECE).or_default();
        piece.users += 1;
        piece.json = None;
    }

    /// The user whose `new_user` event is `seq` changed (their state).
    pub(crate) fn changed(&mut self, seq: EventId) {
        if let Some(piece) = self.pieces.get_mut(&(seq / PIECE)) {
            piece.json = None;
        }
    }

    /// The user whose `new_user` event is `seq` went offline.
    pub(crate) fn removed(&mut self, seq: EventId) {
        if let Entry::Occupied(mut entry) = self.pieces.entry(seq / PIECE) {
            let piece = entry.get_mut();
            piece.users -= 1;
            piece.json = None;
            if piece.users == 0 {
                entry.remove();
            }
        }
    }

    /// The JSON array of everyone online, oldest first, as shared pieces.
    /// `lookup` yields the users whose `new_user` ids fall in a range, in order.
    pub(crate) fn json<'a, I>(&mut self, lookup: impl Fn(std::ops::Range<EventId>) -> I) -> Pieces
    where
        I: Iterator<Item = (&'a UserId, &'a Name, Option<&'a UserState>)>,
    {
        let mut out = Pieces::with_capacity(2 * self.pieces.len() + 1);
        out.push(Bytes::from_static(b"["));
        for (index, (&key, piece)) in self.pieces.iter_mut().enumerate() {
            if index > 0 {
                out.push(Bytes::from_static(b","));
            }
            let json = piece
                .json
                .get_or_insert_with(|| encode(lookup(key * PIECE..(key + 1) * PIECE)));
            out.push(json.clone());
        }
        out.push(Bytes::from_static(b"]"));
        out
    }
}

fn encode<'a>(users: impl Iterator<Item = (&'a UserId, &'a Name, Option<&'a UserState>)>) -> Bytes {
    let mut out = Vec::new();
    for (index, (id, name, state)) in users.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        // A signed join's id is the site's text: it is escaped as a name is.
        // Writing JSON into a Vec cannot fail.
        out.extend_from_slice(b"{\"id\":");
        let _ = serde::Serializer::collect_str(&mut serde_json::Serializer::new(&mut out), id);
        out.extend_from_slice(b",\"name\":");
        let _ = serde_json::to_writer(&mut out, name.as_str());
        if let Some(state) = state {
            out.extend_from_slice(b",\"state\":");
            out.extend_from_slice(state.as_json().as_bytes());
        }
        out.push(b'}');
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        users: BTreeMap<EventId, (UserId, Name)>,
        roster: Roster,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                users: BTreeMap::new(),
                roster: Roster::default(),
            }
        }

        fn add(&mut self, seq: EventId, name: &str) {
            let name = Name::parse(name).expect("valid name");
            self.users.insert(seq, (UserId::random(), name));
            self.roster.added(seq);
        }

        fn remove(&mut self, seq: EventId) {
            self.users.remove(&seq);
            self.roster.removed(seq);
        }

        fn names(&mut self) -> Vec<String> {
            let users = &self.users;
            let json = self
                .roster
                .json(|range| users.range(range).map(|(_, (id, name))| (id, name, None)));
            let list: Vec<serde_json::Value> =
                serde_json::from_slice(&json.to_bytes()).expect("a JSON array");
            list.iter()
                .map(|user| user["name"].as_str().expect("a name").to_owned())
                .collect()
        }
    }

    #[test]
    fn an_empty_roster_is_an_empty_array() {
        assert!(Fixture::new().names().is_empty());
    }

    #[test]
    fn the_list_is_in_join_order_across_pieces_and_follows_every_change() {
        let mut fixture = Fixture::new();
        for seq in 1..=400 {
            fixture.add(seq, &format!("u{seq}"));
        }
        assert_eq!(fixture.names().len(), 400);
        fixture.remove(1);
        fixture.remove(200);
        for seq in 256..384 {
            fixture.remove(seq); // a whole piece goes
        }
        fixture.add(401, "last");
        let expected: Vec<String> = fixture
            .users
            .values()
            .map(|(_, name)| name.to_string())
            .collect();
        assert_eq!(fixture.names(), expected);
        assert_eq!(expected.last().map(String::as_str), Some("last"));
    }

    #[test]
    fn names_are_escaped_as_json_strings() {
        let mut fixture = Fixture::new();
        fixture.add(1, "a\"b\\c</script>");
        assert_eq!(fixture.names(), ["a\"b\\c</script>"]);
    }

    #[test]
    fn a_site_s_id_is_escaped_as_a_json_string_too() {
        let mut fixture = Fixture::new();
        let id = UserId::parse("a\"b\\c</script>").expect("a valid id");
        let name = Name::parse("x").expect("valid name");
        fixture.users.insert(1, (id, name));
        fixture.roster.added(1);
        let users = &fixture.users;
        let json = fixture
            .roster
            .json(|range| users.range(range).map(|(_, (id, name))| (id, name, None)));
        let list: serde_json::Value =
            serde_json::from_slice(&json.to_bytes()).expect("a JSON array");
        assert_eq!(list[0]["id"], "a\"b\\c</script>");
    }
}
