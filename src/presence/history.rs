//! The bounded log of recent events, so a stream that reconnects with
//! `Last-Event-ID` gets what it missed instead of a fresh snapshot.
//! Once full, the oldest event is forgotten; asking for it gives `None`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::{Event, EventId};
use super::pieces::Pieces;

#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
}

impl History {
    pub(crate) fn new(capacity: usize) -> History {
        History {
            // Grown as events come: a quiet room keeps a few.
            events: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, event: Arc<Event>) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Every frame after `after`, in order and sharing the events' buffers, when the
    /// history still holds all of them. `latest` is the newest event id issued.
    /// `None` when `after` is older than what is kept, or newer than `latest`
    /// (an id this server never gave out).
    pub(crate) fn replay_after(&self, after: EventId, latest: EventId) -> Option<Pieces> {
        if after > latest {
            return None;
        }
        if after == latest {
            return Some(Pieces::default());
        }
        let oldest = self.events.front()?.id;
        if after + 1 < oldest {
            return None;
        }
        let skip = usize::try_from(after + 1 - oldest).ok()?;
        let mut out = Pieces::with_capacity(self.events.len() - skip.min(self.events.len()));
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
    use crate::presence::event::EventKind;
    use crate::presence::name::{Name, UserId};

    fn history_of(ids: std::ops::RangeInclusive<EventId>, capacity: usize) -> History {
        let name = Name::parse("x").expect("valid");
        let mut history = History::new(capacity);
        for id in ids {
            history.push(Arc::new(Event::new(
                &crate::presence::RoomName::lobby(),
                id,
                EventKind::NewUser,
                UserId::random(),
                &name,
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
}
