//! Long polling: parked PULL/POP requests wait for a message to arrive on their queue (or any
//! queue of the topic, for pops over all queues) or for their deadline.
//!
//! The hub holds one [`Notify`] per (topic, queue) that has waiters; every append calls
//! [`ArrivalHub::arrived`]. A waiter registers interest *before* checking the store again, so an
//! arrival between the check and the wait is never missed.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;

/// Queue id used for waiters interested in every queue of a topic.
pub const ANY_QUEUE: i32 = -1;
/// Above this many entries, entries nobody waits on are swept.
const SWEEP_ABOVE: usize = 4096;

/// Wakes parked requests when messages arrive.
#[derive(Debug, Default)]
pub struct ArrivalHub {
    slots: Mutex<HashMap<(String, i32), Arc<Notify>>>,
}

impl ArrivalHub {
    /// A new hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// The notifier for (topic, queue); use `ANY_QUEUE` to hear about every queue.
    pub fn waiter(&self, topic: &str, queue_id: i32) -> Arc<Notify> {
        let mut slots = self.slots.lock();
        if slots.len() > SWEEP_ABOVE {
            slots.retain(|_, n| Arc::strong_count(n) > 1);
        }
        slots
            .entry((topic.to_owned(), queue_id))
            .or_default()
            .clone()
    }

    /// Requests parked on `topic` right now (any queue), as far as their notifiers show: each
    /// waiter holds its notifier while it waits. For tests and introspection.
    pub fn parked(&self, topic: &str) -> usize {
        let slots = self.slots.lock();
        slots
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, n)| Arc::strong_count(n) - 1)
            .sum()
    }

    /// A message arrived on (topic, queue): wake its waiters and the topic-wide ones.
    pub fn arrived(&self, topic: &str, queue_id: i32) {
        let slots = self.slots.lock();
        if slots.is_empty() {
            return;
        }
        let key = (topic.to_owned(), queue_id);
        if let Some(n) = slots.get(&key) {
            n.notify_waiters();
        }
        if let Some(n) = slots.get(&(key.0, ANY_QUEUE)) {
            n.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn arrival_wakes_queue_and_topic_waiters() {
        let hub = Arc::new(ArrivalHub::new());
        let q = hub.waiter("T", 1);
        let any = hub.waiter("T", ANY_QUEUE);
        let other = hub.waiter("T", 2);
        let (a, b, c) = (q.notified(), any.notified(), other.notified());
        tokio::pin!(a, b, c);
        a.as_mut().enable();
        b.as_mut().enable();
        c.as_mut().enable();
        assert_eq!(hub.parked("T"), 3);
        assert_eq!(hub.parked("U"), 0);
        hub.arrived("T", 1);
        tokio::time::timeout(Duration::from_secs(1), a)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), c)
            .await
            .is_err());
    }
}
