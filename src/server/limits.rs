//! How many connections may be open at once: a count every accepted
//! connection takes a slot of, and gives back when it closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the connections open at once.
#[derive(Clone)]
pub struct Connections {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open connection; it stops counting when dropped.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for one more connection, unless `max` are already open.
    pub fn open(&self) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_maximum_get_no_slot_until_one_closes() {
        let connections = Connections::new(2);
        let first = connections.open().expect("a slot");
        let _second = connections.open().expect("a slot");
        assert!(connections.open().is_none());
        drop(first);
        assert!(connections.open().is_some());
    }
}
