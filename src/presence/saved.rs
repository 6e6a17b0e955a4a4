//! A process's rooms as they stand, to be put back by a process started
//! after it (`--state-file`): who is online in each room, each membership by
//! its token's key (a SHA-256, never the token), and where each room's ids
//! are. Put back, every membership is as if its streams had just closed: it
//! has what is left of its grace to open one again, so clients that resume
//! with `Last-Event-ID` see no leave and no join.
//!
//! What is read is checked whole before any room is touched: a file that
//! does not hold up is refused, and nothing of it is loaded.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::event::{EventId, UserView};
use super::lobby::State;
use super::name::{Name, TokenKey, UserId, UserState};
use super::room::RoomName;
use super::{LeaveReason, Local, Presence, Rooms};

/// Every room of a process, in the form that is written.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    /// The newest id sent in any room: rooms made later number past it.
    pub newest: EventId,
    pub rooms: Vec<SavedRoom>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedRoom {
    pub room: String,
    /// The room's newest event id: a stream that resumes from it is told nothing new.
    pub latest: EventId,
    /// Oldest first.
    pub people: Vec<SavedPerson>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPerson {
    /// The id of their `new_user`, which orders the room's list.
    pub seq: EventId,
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    /// Their memberships' token keys, as 64 hex digits.
    pub members: Vec<String>,
}

/// Why a saved file cannot be put back.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("room {0:?} is not a room name")]
    Room(String),
    #[error("room {room}: {what} {value:?} is not valid")]
    Invalid {
        room: String,
        what: &'static str,
        value: String,
    },
    #[error("room {0}: its people are not in order, or one is past its latest id")]
    Order(String),
    #[error("room {0} is listed twice")]
    Twice(String),
    #[error("room {room}: {what} {value:?} is listed twice")]
    Repeated {
        room: String,
        what: &'static str,
        value: String,
    },
}

/// A room read and checked, ready to go in.
struct Checked {
    room: RoomName,
    latest: EventId,
    people: Vec<(EventId, UserView, Vec<TokenKey>)>,
}

impl Rooms {
    /// Every room with someone in it, as it stands.
    pub fn save(&self) -> Saved {
        let rooms = self.lock();
        let mut saved = Vec::with_capacity(rooms.len());
        for presence in rooms.values() {
            let state = presence.shared.lock();
            if state.people.is_empty() {
                continue;
            }
            saved.push(save_room(&state));
        }
        Saved {
            newest: self.shared.outlet.newest(),
            rooms: saved,
        }
    }

    /// Puts back `saved` in these rooms, which must be new: every membership
    /// gets `left` of its grace to open a stream. Refused whole, with nothing
    /// loaded, if any part of it does not hold up.
    pub fn restore(&self, saved: Saved, left: Duration) -> Result<usize, SavedError> {
        let checked = check(saved.rooms)?;
        let deadline = Instant::now() + left;
        self.shared.outlet.reached(
            saved.newest.max(
                checked
                    .iter()
                    .map(|room| room.latest)
                    .max()
                    .unwrap_or_default(),
            ),
        );
        let mut people = 0;
        let mut rooms = self.lock();
        for Checked {
            room,
            latest,
            people: persons,
        } in checked
        {
            let presence = rooms
                .entry(room.clone())
                .or_insert_with(|| self.make(&room))
                .clone();
            people += persons.len();
            presence.put_back(latest, persons, deadline);
        }
        Ok(people)
    }
}

fn save_room(state: &State<Local>) -> SavedRoom {
    SavedRoom {
        room: state.room.as_str().to_owned(),
        latest: state.latest,
        people: state
            .people
            .iter()
            .map(|(seq, person)| SavedPerson {
                seq: *seq,
                id: person.id.to_string(),
                name: person.name.as_str().to_owned(),
                state: person
                    .state
                    .as_ref()
                    .and_then(|state| serde_json::from_str(state.as_json()).ok()),
                members: person.members.iter().map(TokenKey::to_hex).collect(),
            })
            .collect(),
    }
}

/// Reads every room as the rules of a live one would take it.
fn check(rooms: Vec<SavedRoom>) -> Result<Vec<Checked>, SavedError> {
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(rooms.len());
    for saved in rooms {
        let room =
            RoomName::parse(&saved.room).map_err(|_| SavedError::Room(saved.room.clone()))?;
        if !seen.insert(room.clone()) {
            return Err(SavedError::Twice(saved.room));
        }
        let invalid = |what, value: &str| SavedError::Invalid {
            room: saved.room.clone(),
            what,
            value: value.to_owned(),
        };
        let repeated = |what, value: &str| SavedError::Repeated {
            room: saved.room.clone(),
            what,
            value: value.to_owned(),
        };
        let (mut ids, mut all_keys) = (HashSet::new(), HashSet::new());
        let mut people = Vec::with_capacity(saved.people.len());
        let mut before = None;
        for person in &saved.people {
            if before.is_some_and(|before| before >= person.seq) || person.seq > saved.latest {
                return Err(SavedError::Order(saved.room.clone()));
            }
            before = Some(person.seq);
            let id = UserId::read(&person.id).map_err(|_| invalid("id", &person.id))?;
            let name = Name::parse(&person.name).map_err(|_| invalid("name", &person.name))?;
            let state = match &person.state {
                Some(value) => Some(
                    UserState::from_value(value)
                        .map_err(|_| invalid("state", &value.to_string()))?,
                ),
                None => None,
            };
            let keys = person
                .members
                .iter()
                .map(|hex| TokenKey::from_hex(hex).ok_or_else(|| invalid("token key", hex)))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Err(invalid("person without a membership", &person.id));
            }
            if !ids.insert(id.clone()) {
                return Err(repeated("id", &person.id));
            }
            if let Some(key) = keys.iter().find(|key| !all_keys.insert(**key)) {
                return Err(repeated("token key", &key.to_hex()));
            }
            people.push((person.seq, UserView { id, name, state }, keys));
        }
        checked.push(Checked {
            room,
            latest: saved.latest,
            people,
        });
    }
    Ok(checked)
}

impl Presence {
    /// Puts people back in this new room, each membership with no stream
    /// until `deadline`, and the room's ids at `latest`.
    fn put_back(
        &self,
        latest: EventId,
        people: Vec<(EventId, UserView, Vec<TokenKey>)>,
        deadline: Instant,
    ) {
        let mut state = self.shared.lock();
        state.latest = latest;
        state.history = super::history::History::new(self.shared.config.history_len(), latest);
        for (seq, view, keys) in people {
            state.add_person(seq, view);
            for key in keys {
                state.add_member(seq, key, Some((deadline, LeaveReason::GraceExpired)));
                state.own.insert((deadline, key));
            }
        }
        drop(state);
        self.shared.kind.expiry.notify_one();
    }
}
