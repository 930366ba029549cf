//! Handle actions (what to ack or extend at a broker) and the held-handle table's bookkeeping:
//! forgetting handles and settling ack outcomes.

use std::sync::Arc;

use crate::codec::pop::{PopHandle, RetryFlag};

use super::queue::{Held, HeldState, OffsetMap, VQueue, VQueueKey};
use super::Translator;

/// A handle to ack (or to change invisible time of) at a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleAction {
    pub key: Arc<VQueueKey>,
    /// Virtual offset (to report the outcome back).
    pub offset: i64,
    /// The broker that served the pop.
    pub broker: Arc<str>,
    /// Real queue id and offset of the message.
    pub queue_id: i32,
    pub queue_offset: i64,
    /// The pop handle (`extraInfo` once formatted).
    pub handle: PopHandle,
    /// The pop checkpoint the handle belongs to (what BATCH_ACK_MESSAGE names).
    pub checkpoint: CheckpointRef,
    /// New invisible time for change-invisible actions, ms.
    pub invisible_time_ms: i64,
    /// The handle's identity in the translator (the virtual commit log offset it was stamped
    /// with, never handed out twice). An outcome reported for this action applies only to the
    /// handle it was made for: by then the offset may hold another message (a rewind or a
    /// dropped prefetch frees offsets, and later pops are stamped there).
    pub serial: i64,
}

/// A broker's pop checkpoint, as a pop handle names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointRef {
    /// The checkpoint's start offset (`extraInfo` field 0).
    pub start_offset: i64,
    pub pop_time: i64,
    pub invisible_time: i64,
    pub revive_qid: i32,
    pub retry: RetryFlag,
}

impl HandleAction {
    /// The topic to name in the request (the retry topic for retry messages).
    pub fn topic(&self) -> String {
        self.handle.real_topic(&self.key.topic, &self.key.group)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.key.group
    }

    /// The pop handle as `extraInfo`.
    pub fn extra_info(&self) -> String {
        self.handle.to_extra_info()
    }
}

impl CheckpointRef {
    fn of(h: &PopHandle) -> Self {
        CheckpointRef {
            start_offset: h.ck_queue_offset,
            pop_time: h.pop_time,
            invisible_time: h.invisible_time,
            revive_qid: h.revive_qid,
            retry: h.retry,
        }
    }
}

/// How an ack or renewal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (acked, or the broker no longer knows the handle: it is redelivered either way).
    Done,
    /// Not delivered (transport failure): keep it and try again later.
    Retry,
}

impl Translator {
    /// Forgets (never acks) the handles of `key` at `from` and beyond that are in `state`, except
    /// committed ones: their acks are owed.
    pub(super) fn remove_held_from(&mut self, key: &VQueueKey, from: i64, state: HeldState) {
        let Some(vq) = self.queues.get(key) else {
            return;
        };
        let dropped: Vec<i64> = vq
            .held
            .range(from..)
            .filter(|(_, h)| h.state == state && !h.committed)
            .map(|(o, _)| *o)
            .collect();
        for o in dropped {
            self.remove_held(key, o);
        }
    }

    /// Forgets one handle (acked, or left to the broker to redeliver).
    pub(super) fn remove_held(&mut self, key: &VQueueKey, offset: i64) {
        if let Some(vq) = self.queues.get_mut(key) {
            Self::settle(
                vq,
                &mut self.held,
                &mut self.by_phys,
                offset,
                None,
                Outcome::Done,
            );
        }
    }

    pub(super) fn action(
        key: &Arc<VQueueKey>,
        offset: i64,
        h: &Held,
        invisible_time_ms: i64,
    ) -> HandleAction {
        HandleAction {
            key: key.clone(),
            offset,
            broker: h.broker.clone(),
            queue_id: h.handle.queue_id,
            queue_offset: h.handle.queue_offset,
            handle: h.handle.clone(),
            checkpoint: CheckpointRef::of(&h.handle),
            invisible_time_ms,
            serial: h.commit_log_offset,
        }
    }

    /// The ack of `action` finished.
    pub fn ack_done(&mut self, action: &HandleAction, outcome: Outcome) {
        if let Some(vq) = self.queues.get_mut(&*action.key) {
            Self::settle(
                vq,
                &mut self.held,
                &mut self.by_phys,
                action.offset,
                Some(action.serial),
                outcome,
            );
        }
    }

    /// The end of one ack of `vq` at `offset` (of the handle `serial` names, when given; any
    /// other handle there is left alone): done forgets the handle, retry owes it again.
    pub(super) fn settle(
        vq: &mut VQueue,
        held: &mut usize,
        by_phys: &mut OffsetMap<(Arc<VQueueKey>, i64)>,
        offset: i64,
        serial: Option<i64>,
        outcome: Outcome,
    ) {
        let Some(h) = vq.held.get_mut(&offset) else {
            return;
        };
        if serial.is_some_and(|s| s != h.commit_log_offset) {
            return;
        }
        match outcome {
            Outcome::Done => {
                let phys = h.commit_log_offset;
                vq.held.remove(&offset);
                *held -= 1;
                by_phys.remove(&phys);
            }
            Outcome::Retry => h.state = HeldState::Outstanding,
        }
    }

    /// Acks finished, all with the same outcome: like [`Translator::ack_done`] for each, with
    /// one queue look-up per run of actions of the same queue (a commit's acks come in runs).
    pub fn ack_done_all(&mut self, actions: &[HandleAction], outcome: Outcome) {
        let mut rest = actions;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|a| !Arc::ptr_eq(&a.key, &first.key) && a.key != first.key)
                .unwrap_or(rest.len());
            let (now, later) = rest.split_at(run);
            rest = later;
            let Some(vq) = self.queues.get_mut(&*first.key) else {
                continue;
            };
            for a in now {
                Self::settle(
                    vq,
                    &mut self.held,
                    &mut self.by_phys,
                    a.offset,
                    Some(a.serial),
                    outcome,
                );
            }
        }
    }
}
