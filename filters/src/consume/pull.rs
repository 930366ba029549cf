//! PULL -> POP: planning a pull (from the prefetch buffer, a pop, or throttled) and stamping the
//! pop's answer.

use bytes::BytesMut;

use crate::codec::headers::PopMessageResponseHeader;

use super::queue::{HeldState, VQueue, VQueueKey};
use super::{ConsumeError, HandleAction, Translator};

/// What to do for a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullPlan {
    /// Pop up to this many messages (from the broker and queue the virtual queue maps to).
    Pop { max_msgs: i32 },
    /// Too many messages held and not committed: wait for a commit, then answer not-found.
    Throttled,
    /// Answered from the prefetched batch (start the next prefetch).
    Ready(PullReply),
    /// The batch at this offset is being prefetched: wait for it, then begin the pull again.
    Wait,
    /// Refused (a table is full); answer an error with this text.
    Refused(String),
}

/// The answer to a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullReply {
    Found {
        next_begin: i64,
        max_offset: i64,
        body: BytesMut,
        count: usize,
    },
    NotFound {
        next_begin: i64,
        max_offset: i64,
    },
}

impl Translator {
    /// A PULL for `key` at `offset`, optionally committing `commit` first.
    /// Returns the acks the commit causes and what to do for the pull.
    pub fn begin_pull(
        &mut self,
        key: &VQueueKey,
        offset: i64,
        max_msgs: i32,
        commit: Option<i64>,
    ) -> (Vec<HandleAction>, PullPlan) {
        let acks = match commit {
            Some(c) if c > 0 => self.commit(key, c),
            _ => Vec::new(),
        };
        if !self.queues.contains_key(key) && self.queues.len() >= self.cfg.max_queues {
            return (
                acks,
                PullPlan::Refused(format!("too many queues tracked ({})", self.cfg.max_queues)),
            );
        }
        let offset = offset.max(0);
        let vq = self
            .queues
            .entry(key.clone())
            .or_insert_with(|| VQueue::new(key));
        vq.last_max = max_msgs.clamp(1, 32);
        if offset == vq.next {
            if let Some(chunk) = vq.ahead.front_mut() {
                // The front chunk's records, as many as asked for.
                let n = chunk.lens.len().min(vq.last_max as usize);
                let bytes: usize = chunk.lens.drain(..n).sum();
                let body = chunk.body.split_to(bytes);
                let start = chunk.start;
                chunk.start += n as i64;
                if chunk.lens.is_empty() {
                    vq.ahead.pop_front();
                }
                let end = start + n as i64;
                for (_, h) in vq.held.range_mut(start..end) {
                    if h.state == HeldState::Prefetched {
                        h.state = HeldState::Outstanding;
                    }
                }
                vq.next = end;
                let reply = PullReply::Found {
                    next_begin: end,
                    max_offset: end,
                    body,
                    count: n,
                };
                return (acks, PullPlan::Ready(reply));
            }
            if vq.in_flight.is_some() {
                return (acks, PullPlan::Wait);
            }
        } else {
            // The consumer reads somewhere else: what was popped ahead is not for it.
            self.drop_prefetch(key);
        }
        let vq = self.queues.get_mut(key).expect("just inserted");
        if offset < vq.next {
            // The consumer went back (offset reset): what it held past `offset` is no longer
            // in its process queue. Stop tracking it; the broker redelivers it when it expires.
            self.remove_held_from(key, offset, HeldState::Outstanding);
        }
        let vq = self.queues.get_mut(key).expect("just inserted");
        // Handles a rewind left behind (acks or send-backs in flight) keep their offsets, by
        // which their outcomes come back: new records are stamped after them, never over them.
        // The consumer takes the offsets skipped as filtered out.
        vq.next = vq
            .held
            .range(offset..)
            .next_back()
            .map_or(offset, |(o, _)| o + 1);
        let room = self.cfg.max_held_per_queue.saturating_sub(vq.held.len());
        if room == 0 {
            return (acks, PullPlan::Throttled);
        }
        let max = vq.last_max.min(room as i32);
        (acks, PullPlan::Pop { max_msgs: max })
    }

    /// Whether `key` still has no room (for a throttled pull waiting on a commit).
    pub fn is_throttled(&self, key: &VQueueKey) -> bool {
        self.queues
            .get(key)
            .is_some_and(|q| q.held.len() >= self.cfg.max_held_per_queue)
    }

    /// The POP caused by a pull at `offset` returned: `found` with its header and body, or
    /// nothing. Re-stamps the records in place into the virtual offset space (queue offsets and
    /// commit log offsets), and their store host to `store_host` when given (SDKs send a message
    /// back to its store host: it must be the sidecar, never the real broker).
    pub fn complete_pull(
        &mut self,
        key: &VQueueKey,
        offset: i64,
        broker: &str,
        found: Option<(&PopMessageResponseHeader, BytesMut)>,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
    ) -> Result<PullReply, ConsumeError> {
        // Another pull of the same queue prefetched meanwhile: this one's records take the
        // offsets, the batch ahead is dropped.
        self.drop_prefetch(key);
        let Some(vq) = self.queues.get_mut(key) else {
            // The connection closed meanwhile; nothing to stamp into.
            return Ok(PullReply::NotFound {
                next_begin: offset,
                max_offset: offset,
            });
        };
        let Some((header, body)) = found else {
            return Ok(PullReply::NotFound {
                next_begin: vq.next.max(offset),
                max_offset: vq.next,
            });
        };
        let start = vq.next.max(offset);
        let (next, body, lens) = self.stamp(
            key,
            start,
            broker,
            header,
            body,
            store_host,
            now_ms,
            HeldState::Outstanding,
        )?;
        self.queues.get_mut(key).expect("checked above").next = next;
        let count = lens.len();
        if count == 0 {
            return Ok(PullReply::NotFound {
                next_begin: start,
                max_offset: next,
            });
        }
        Ok(PullReply::Found {
            next_begin: next,
            max_offset: next,
            body,
            count,
        })
    }
}
