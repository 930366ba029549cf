//! The Pull -> Pop translator (sans-IO): lets a legacy push consumer, which owns queues and pulls
//! them by offset, consume through Pop, where every consumer shares every queue.
//!
//! The sidecar feeds it events (a PULL arrived, the POP it caused returned, an offset was
//! committed, a message was sent back, time passed, a connection closed) and carries out what it
//! answers (pop here, ack these handles, change that one's invisible time). It owns no sockets and
//! no clock: time comes in as milliseconds.
//!
//! * **Virtual offsets.** Each (connection, group, topic, virtual queue) has its own offset space.
//!   A pull at offset `o` becomes a pop; the records that come back are re-stamped in place
//!   (queueId := the virtual queue, queueOffset := o, o+1, ...), and the translator remembers
//!   `virtual offset -> pop handle`. nextBeginOffset = o + n; an empty pop answers PULL_NOT_FOUND
//!   with nextBeginOffset = o. PULL_OFFSET_MOVED is never answered.
//! * **Virtual commit log offsets.** A record's commitLogOffset is re-stamped too, with a number
//!   unique in this translator: it is all a CONSUMER_SEND_MSG_BACK names the message by, and the
//!   real brokers' commit logs overlap (two brokers fed alike hold different messages at the same
//!   offsets), so the real offset would pick the wrong message. The real one is kept for the
//!   dead-letter forward.
//! * **Commits become acks.** A committed offset X (UPDATE_CONSUMER_OFFSET, or a pull's
//!   commitOffset) acks every handle below X that is still held; [`batch_acks`] groups them into
//!   one BATCH_ACK_MESSAGE per broker (one `BatchAck` per pop checkpoint) instead of one
//!   ACK_MESSAGE per message.
//! * **Send-back becomes change-invisible-time** with the delay of the level; that handle is then
//!   skipped by offset acks. Past the max reconsume times the message goes to the broker's DLQ.
//! * **Renewal.** Held handles are extended before they become visible again, up to a maximum
//!   holding time; past it they are let go so a hung consumer's messages reach the others.
//! * **Nothing is lost.** A handle is only acked for a committed offset; a connection that goes away
//!   takes its table with it and the broker redelivers everything not acked.
//! * **Bounded.** Handles per queue and queues in all are capped; a queue at its cap is throttled
//!   (no pop) until its consumer commits, as the SDK's own flow control would.
//! * **Prefetch.** Once a pull of a virtual queue is answered with messages, the sidecar pops
//!   ahead for that queue in the background ([`Translator::begin_prefetch`], without long
//!   polling): at most one pop in flight per virtual queue, and at most
//!   [`TranslatorConfig::prefetch_max`] messages buffered ahead (one prefetched batch of up to
//!   that size, filled by back-to-back pops of at most 32). Each pop's records are stamped at the
//!   end of the buffer (the queue's next virtual offsets) and their handles are held (counted
//!   against the bounds, renewed) but not delivered. The next pull at exactly the buffer's start
//!   is answered from it at once (one pop's records at most); a pull finding the buffer empty
//!   while a pop is in flight waits for it. A pull anywhere else (a rewind), a buffered handle
//!   that expires or fails its renewal, or the connection closing drops the whole buffer
//!   un-acked: the broker redelivers it once its invisible time is over. A prefetched handle is
//!   never acked.

//!
//! Layout (each module only calls into the ones listed before it): `queue` (per-virtual-queue
//! state), `handles` (handle actions, forgetting and settling handles), `acks` (commits ->
//! acks, batching), `send_back`, `stamp` (re-stamping pop records), `prefetch`, `pull`, `renew`.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::codec::message::MessageError;
use crate::codec::pop::PopError;

mod acks;
mod handles;
mod minted;
mod prefetch;
mod pull;
mod queue;
mod renew;
mod send_back;
mod stamp;
#[doc(hidden)]
pub mod testing;

pub use acks::{batch_acks, AckBatch};
pub use handles::{CheckpointRef, HandleAction, Outcome};
pub use minted::{Minted, MintedIds, MAX_MINTED};
pub use prefetch::PrefetchTicket;
pub use pull::{PullPlan, PullReply};
pub use queue::VQueueKey;
pub use send_back::{send_back_delay_ms, SendBackPlan, DELAY_LEVELS_MS};

use queue::{OffsetMap, VQueue};

/// Translator limits and timings.
#[derive(Debug, Clone)]
pub struct TranslatorConfig {
    /// Invisible time asked for on pop and on renewal, ms.
    pub invisible_time_ms: i64,
    /// Renew a held handle when less than this is left of its invisible time, ms.
    pub renew_before_ms: i64,
    /// Longest a handle is held (renewed) for one consumer, ms (like the SDK's consumeTimeout).
    pub max_hold_ms: i64,
    /// Most handles held per virtual queue; past it the queue is throttled until a commit.
    pub max_held_per_queue: usize,
    /// Most virtual queues tracked in all.
    pub max_queues: usize,
    /// Most messages popped ahead (prefetched, not delivered) per virtual queue; 0 turns
    /// prefetching off. A prefetch pop starts only while at least 32 more fit.
    pub prefetch_max: usize,
}

impl Default for TranslatorConfig {
    fn default() -> Self {
        TranslatorConfig {
            invisible_time_ms: 60_000,
            renew_before_ms: 15_000,
            max_hold_ms: 15 * 60_000,
            max_held_per_queue: 1024,
            max_queues: 16_384,
            prefetch_max: 64,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConsumeError {
    #[error("pop response: {0}")]
    Pop(#[from] PopError),
    #[error("pop response body: {0}")]
    Message(#[from] MessageError),
}

/// The translator state of one sidecar.
#[derive(Debug)]
pub struct Translator {
    cfg: TranslatorConfig,
    queues: HashMap<VQueueKey, VQueue>,
    /// Virtual commit log offset (unique in the translator) -> (queue, virtual offset), for
    /// send-backs.
    by_phys: OffsetMap<(Arc<VQueueKey>, i64)>,
    /// The next virtual commit log offset to hand out.
    next_phys: i64,
    /// What recent virtual commit log offsets stand for (for tools).
    minted: MintedIds,
    held: usize,
    /// Committed handles whose ack never got through before they became visible again (the
    /// broker redelivers those messages: duplicates, not loss). Counted, never silent.
    acks_expired: u64,
}

impl Translator {
    pub fn new(cfg: TranslatorConfig) -> Self {
        Translator {
            cfg,
            queues: HashMap::new(),
            by_phys: OffsetMap::default(),
            next_phys: 0,
            minted: MintedIds::default(),
            acks_expired: 0,
            held: 0,
        }
    }

    /// The broker message behind a virtual commit log offset handed out recently.
    pub fn minted(&self, offset: i64) -> Option<&Minted> {
        self.minted.get(offset)
    }

    pub fn config(&self) -> &TranslatorConfig {
        &self.cfg
    }

    /// Handles held in all (the `outstanding_handles` gauge).
    pub fn held(&self) -> usize {
        self.held
    }

    /// The consumer's connection closed: forget its queues. Nothing is acked (commits already
    /// were); the broker redelivers the rest.
    pub fn connection_closed(&mut self, conn: u64) {
        let keys: Vec<VQueueKey> = self
            .queues
            .keys()
            .filter(|k| k.conn == conn)
            .cloned()
            .collect();
        for k in keys {
            if let Some(q) = self.queues.remove(&k) {
                self.held -= q.held.len();
            }
        }
        self.by_phys.retain(|_, (k, _)| k.conn != conn);
    }

    /// QUERY_CONSUMER_OFFSET: the committed offset (0 for a queue never pulled).
    pub fn committed(&self, key: &VQueueKey) -> i64 {
        self.queues.get(key).map_or(0, |q| q.committed)
    }

    /// GET_MAX_OFFSET (and SEARCH_OFFSET_BY_TIMESTAMP): the next virtual offset to hand out.
    pub fn max_offset(&self, key: &VQueueKey) -> i64 {
        self.queues.get(key).map_or(0, |q| q.next)
    }

    /// GET_MAX_OFFSET / SEARCH_OFFSET_BY_TIMESTAMP name no group: the largest next offset of any
    /// group of this connection on (topic, queue).
    pub fn max_offset_any(&self, conn: u64, topic: &str, queue: i32) -> i64 {
        self.queues
            .iter()
            .filter(|(k, _)| k.conn == conn && k.topic == topic && k.queue == queue)
            .map(|(_, q)| q.next)
            .max()
            .unwrap_or(0)
    }

    /// Whether any consumer on `conn` has state for `topic`'s virtual `queue`.
    pub fn knows_queue(&self, conn: u64, topic: &str, queue: i32) -> bool {
        self.queues
            .keys()
            .any(|k| k.conn == conn && k.topic == topic && k.queue == queue)
    }

    /// (virtual queues, held handles) for introspection.
    pub fn counts(&self) -> (usize, usize) {
        (self.queues.len(), self.held)
    }
}

#[cfg(test)]
mod tests;
