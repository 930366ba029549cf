//! Per-virtual-queue state: the key, the held handles, the prefetch buffer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::pop::PopHandle;

/// One legacy consumer's view of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VQueueKey {
    /// The downstream connection (one SDK client instance).
    pub conn: u64,
    pub group: String,
    /// The topic as the consumer subscribed it.
    pub topic: String,
    /// The virtual queue id the consumer pulls.
    pub queue: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeldState {
    /// Delivered, not yet committed.
    Outstanding,
    /// An ack for it is in flight.
    Acking,
    /// Sent back (invisible time changed to the retry delay): skipped by offset acks.
    SentBack,
    /// Popped ahead and stamped, not delivered yet: never acked; dropped with its batch.
    Prefetched,
}

#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) broker: Arc<str>,
    pub(super) handle: PopHandle,
    /// The virtual commit log offset the consumer was given (the send-back key).
    pub(super) commit_log_offset: i64,
    /// The message's commit log offset on its broker.
    pub(super) real_commit_log_offset: i64,
    pub(super) reconsume_times: i32,
    /// When it was first delivered to this consumer.
    pub(super) first_pop_ms: i64,
    /// When the broker would make it visible again unless renewed.
    pub(super) visible_at_ms: i64,
    pub(super) renewing: bool,
    /// Covered by a commit of the consumer since it was delivered: its ack is owed (again, after
    /// a failed one) until it is done.
    pub(super) committed: bool,
    pub(super) state: HeldState,
}

#[derive(Debug)]
pub(super) struct VQueue {
    /// The queue's own key, shared by its handles' actions.
    pub(super) key: Arc<VQueueKey>,
    /// The next virtual offset to deliver.
    pub(super) next: i64,
    pub(super) committed: i64,
    pub(super) held: BTreeMap<i64, Held>,
    /// The max message count of the last pull (for prefetches).
    pub(super) last_max: i32,
    /// Prefetched records from `next` on, one chunk per pop, oldest first.
    pub(super) ahead: VecDeque<Chunk>,
    /// The generation of the prefetch pop in flight.
    pub(super) in_flight: Option<u64>,
    /// Bumped whenever a prefetch starts or is dropped: a late pop result of an older one is
    /// not stamped.
    pub(super) generation: u64,
}

/// One prefetch pop's records, stamped at `start..`, not delivered yet.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) start: i64,
    pub(super) body: BytesMut,
    /// Byte length of each record left, in order.
    pub(super) lens: VecDeque<usize>,
}

impl VQueue {
    pub(super) fn buffered(&self) -> usize {
        self.ahead.iter().map(|c| c.lens.len()).sum()
    }

    pub(super) fn ahead_end(&self) -> i64 {
        self.ahead
            .back()
            .map_or(self.next, |c| c.start + c.lens.len() as i64)
    }

    pub(super) fn new(key: &VQueueKey) -> Self {
        VQueue {
            key: Arc::new(key.clone()),
            next: 0,
            committed: 0,
            held: BTreeMap::new(),
            last_max: 32,
            ahead: VecDeque::new(),
            in_flight: None,
            generation: 0,
        }
    }
}

/// Hashes the translator's own integer keys (virtual commit log offsets, handed out in
/// sequence): one multiply instead of SipHash, whose flooding resistance buys nothing for keys
/// no peer chooses.
#[derive(Default, Clone, Copy)]
pub(super) struct OffsetHasher(u64);

impl std::hash::Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i64(&mut self, n: i64) {
        // Fibonacci hashing: sequential keys spread over the high bits hashbrown looks at.
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(super) type OffsetMap<V> = HashMap<i64, V, std::hash::BuildHasherDefault<OffsetHasher>>;
