//! The bounded log of a room's recent events, so a stream that reconnects
//! with `Last-Event-ID` gets what it missed instead of a fresh snapshot.
//! Once full, the oldest event is forgotten; asking for it gives `None`.
//!
//! A room's ids follow one another, but may jump forward (a cluster's room
//! made again starts past every id already sent), so the history knows where
//! its knowledge begins (`floor`) rather than counting back from its newest.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::{Event, EventId};
use super::pieces::Pieces;

#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Every event of the room after this id is kept.
    floor: EventId,
}

impl History {
    /// An empty history of a room that has had no event after `floor`, or
    /// whose earlier events are not known here.
    pub(crate) fn new(capacity: usize, floor: EventId) -> History {
        History {
            // Grown as events come: a quiet room keeps a few.
            events: VecDeque::new(),
            capacity,
            floor,
        }
    }

    pub(crate) fn push(&mut self, event: Arc<Event>) {
        if self.capacity == 0 {
            self.floor = event.id;
            return;
        }
        if self.events.len() >= self.capacity
            && let Some(oldest) = self.events.pop_front()
        {
            self.floor = oldest.id;
        }
        self.events.push_back(event);
    }

    /// Every frame after `after`, in order and sharing the events' buffers, when the
    /// history still holds all of them. `latest` is the room's newest event id.
    /// `None` when `after` is older than what is kept, or newer than `latest`
    /// (an id this room never gave out).
    pub(crate) fn replay_after(&self, after: EventId, latest: EventId) -> Option<Pieces> {
        if after > latest || after < self.floor {
            return None;
        }
        let skip = self.events.partition_point(|event| event.id <= after);
        let mut out = Pieces::with_capacity(self.events.len() - skip);
        for event in self.events.iter().skip(skip) {
            out.push(event.frame.clone());
        }
        Some(out)
    }

    /// When the newest event kept happened.
    pub(crate) fn newest_at(&self) -> Option<tokio::time::Instant> {
        self.events.back().map(|event| event.at)
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::event::{EventKind, UserView};
    use crate::presence::name::{Name, UserId};

    fn history_of(ids: std::ops::RangeInclusive<EventId>, capacity: usize) -> History {
        let name = Name::parse("x").expect("valid");
        let mut history = History::new(capacity, ids.start() - 1);
        for id in ids {
            history.push(Arc::new(Event::new(
                &crate::presence::RoomName::lobby(),
                id,
                EventKind::NewUser,
                &UserView::new(UserId::random(), &name),
            )));
        }
        history
    }

    fn ids_in(frames: &Pieces) -> Vec<EventId> {
        std::str::from_utf8(&frames.to_bytes())
            .expect("utf-8")
            .lines()
            .filter_map(|line| line.strip_prefix("id: "))
            .map(|id| id.parse().expect("decimal id"))
            .collect()
    }

    #[test]
    fn replay_gives_every_event_after_the_one_asked_for_in_order() {
        let history = history_of(1..=5, 10);
        assert_eq!(
            history.replay_after(2, 5).map(|b| ids_in(&b)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(
            history.replay_after(0, 5).map(|b| ids_in(&b)),
            Some(vec![1, 2, 3, 4, 5])
        );
    }

    #[test]
    fn replay_from_the_latest_event_is_empty() {
        let history = history_of(1..=5, 10);
        assert_eq!(history.replay_after(5, 5), Some(Pieces::default()));
    }

    #[test]
    fn the_history_forgets_the_oldest_events_beyond_its_bound() {
        let history = history_of(1..=10, 4);
        assert_eq!(history.len(), 4);
        assert_eq!(
            history.replay_after(6, 10).map(|b| ids_in(&b)),
            Some(vec![7, 8, 9, 10])
        );
        assert_eq!(history.replay_after(5, 10), None, "event 6 is forgotten");
    }

    #[test]
    fn a_history_of_capacity_zero_keeps_nothing_and_replays_nothing_old() {
        let history = history_of(1..=5, 0);
        assert_eq!(history.len(), 0);
        assert_eq!(history.replay_after(3, 5), None);
    }

    #[test]
    fn an_id_from_the_future_cannot_be_replayed() {
        let history = history_of(1..=5, 10);
        assert_eq!(history.replay_after(6, 5), None);
    }

    #[test]
    fn a_room_s_ids_may_jump_and_replay_still_finds_what_came_after() {
        let name = Name::parse("x").expect("valid");
        let room = crate::presence::RoomName::lobby();
        let mut history = History::new(2, 1);
        for id in [3, 7, 12] {
            let view = UserView::new(UserId::random(), &name);
            let event = Event::new(&room, id, EventKind::NewUser, &view);
            history.push(Arc::new(event));
        }
        assert_eq!(
            history.replay_after(8, 20).map(|b| ids_in(&b)),
            Some(vec![12])
        );
        assert_eq!(
            history.replay_after(15, 20).map(|b| ids_in(&b)),
            Some(vec![]),
            "nothing after 12 happened in the room"
        );
        assert_eq!(history.replay_after(2, 20), None, "event 3 is forgotten");
        assert_eq!(
            history.replay_after(3, 20).map(|b| ids_in(&b)),
            Some(vec![7, 12])
        );
        assert_eq!(
            history.replay_after(5, 20).map(|b| ids_in(&b)),
            Some(vec![7, 12])
        );
    }
}
