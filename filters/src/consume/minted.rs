//! What the translator's virtual commit log offsets stand for, remembered for the most recent
//! deliveries: a tool given a delivered message's offset message id (which names the sidecar and
//! a virtual commit log offset) asks the sidecar VIEW_MESSAGE_BY_ID or CONSUME_MESSAGE_DIRECTLY,
//! and the sidecar finds the broker and real offset here, long after the handle is acked.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Most virtual offsets remembered (about 100 bytes each); the oldest is forgotten first.
pub const MAX_MINTED: usize = 65_536;

/// The message behind one virtual commit log offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The broker that served it.
    pub broker: Arc<str>,
    /// Its commit log offset on that broker.
    pub real_commit_log_offset: i64,
    /// The topic the consumer subscribed (a pop-retry record is stored under its retry topic).
    pub topic: String,
    /// The virtual queue it was delivered in.
    pub virtual_queue: i32,
}

/// A bounded first-in first-out memory of [`Minted`] offsets.
#[derive(Debug, Default)]
pub struct MintedIds {
    by_offset: HashMap<i64, Minted>,
    order: VecDeque<i64>,
}

impl MintedIds {
    /// Remembers `offset`, forgetting the oldest beyond [`MAX_MINTED`].
    pub fn remember(&mut self, offset: i64, minted: Minted) {
        if self.by_offset.insert(offset, minted).is_none() {
            self.order.push_back(offset);
        }
        while self.order.len() > MAX_MINTED {
            if let Some(old) = self.order.pop_front() {
                self.by_offset.remove(&old);
            }
        }
    }

    /// What `offset` stands for, if still remembered.
    pub fn get(&self, offset: i64) -> Option<&Minted> {
        self.by_offset.get(&offset)
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_most_recent_and_forgets_the_oldest() {
        let mut ids = MintedIds::default();
        let broker: Arc<str> = Arc::from("b");
        for i in 0..(MAX_MINTED as i64 + 10) {
            ids.remember(
                i,
                Minted {
                    broker: broker.clone(),
                    real_commit_log_offset: i * 100,
                    topic: "T".into(),
                    virtual_queue: 0,
                },
            );
        }
        assert_eq!(ids.len(), MAX_MINTED);
        assert!(ids.get(9).is_none());
        assert_eq!(ids.get(10).unwrap().real_commit_log_offset, 1000);
        assert_eq!(
            ids.get(MAX_MINTED as i64 + 9)
                .unwrap()
                .real_commit_log_offset,
            (MAX_MINTED as i64 + 9) * 100
        );
    }
}
