//! Popping ahead of the consumer: one pop in flight per virtual queue, a bounded buffer of
//! stamped, undelivered records.

use bytes::BytesMut;

use crate::codec::headers::PopMessageResponseHeader;

use super::queue::{Chunk, HeldState, VQueueKey};
use super::{ConsumeError, Translator};

/// A prefetch to run: pop up to `max_msgs` and report with [`Translator::complete_prefetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchTicket {
    pub generation: u64,
    pub max_msgs: i32,
}

impl Translator {
    /// Drops the queue's prefetched batch (or the result of the one in flight): its handles are
    /// forgotten, never acked; the broker redelivers them after their invisible time.
    pub(super) fn drop_prefetch(&mut self, key: &VQueueKey) {
        let Some(vq) = self.queues.get_mut(key) else {
            return;
        };
        if vq.ahead.is_empty() && vq.in_flight.is_none() {
            return;
        }
        vq.ahead.clear();
        vq.in_flight = None;
        vq.generation += 1;
        let next = vq.next;
        self.remove_held_from(key, next, HeldState::Prefetched);
    }

    /// Starts a prefetch pop for `key` when none is in flight, at least 32 more messages fit in
    /// its buffer ahead and it has room for more handles: the caller pops (without long
    /// polling) and reports with [`complete_prefetch`](Self::complete_prefetch).
    pub fn begin_prefetch(&mut self, key: &VQueueKey) -> Option<PrefetchTicket> {
        let vq = self.queues.get_mut(key)?;
        if vq.in_flight.is_some() {
            return None;
        }
        let fits = self.cfg.prefetch_max.saturating_sub(vq.buffered());
        let room = self.cfg.max_held_per_queue.saturating_sub(vq.held.len());
        let max = fits.min(room).min(vq.last_max as usize);
        if max == 0 || fits < 32.min(vq.last_max as usize) {
            return None;
        }
        vq.generation += 1;
        vq.in_flight = Some(vq.generation);
        Some(PrefetchTicket {
            generation: vq.generation,
            max_msgs: max as i32,
        })
    }

    /// The prefetch pop of `ticket` returned. Its records are stamped at the end of the queue's
    /// buffer ahead and held, undelivered, for the next pulls; returns whether records were
    /// added. A result the queue no longer waits for (the connection closed, the consumer
    /// rewound) is dropped: never acked, redelivered by the broker after the invisible time.
    #[allow(clippy::too_many_arguments)]
    pub fn complete_prefetch(
        &mut self,
        key: &VQueueKey,
        ticket: PrefetchTicket,
        broker: &str,
        found: Option<(&PopMessageResponseHeader, BytesMut)>,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
    ) -> Result<bool, ConsumeError> {
        let Some(vq) = self.queues.get_mut(key) else {
            return Ok(false);
        };
        if vq.in_flight != Some(ticket.generation) {
            return Ok(false);
        }
        vq.in_flight = None;
        let start = vq.ahead_end();
        let Some((header, body)) = found else {
            return Ok(false);
        };
        let (_, body, lens) = self.stamp(
            key,
            start,
            broker,
            header,
            body,
            store_host,
            now_ms,
            HeldState::Prefetched,
        )?;
        if lens.is_empty() {
            return Ok(false);
        }
        self.queues
            .get_mut(key)
            .expect("checked above")
            .ahead
            .push_back(Chunk { start, body, lens });
        Ok(true)
    }
}
