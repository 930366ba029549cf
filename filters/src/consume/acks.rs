//! Commits become acks: offset commits mark held handles for acking, and [`batch_acks`] groups
//! them into BATCH_ACK_MESSAGE requests.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::body::{AckBitSet, BatchAck, BatchAckMessageRequestBody};

use super::handles::{CheckpointRef, HandleAction};
use super::queue::{HeldState, VQueueKey};
use super::Translator;

/// Acks for one broker, as one BATCH_ACK_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBatch {
    /// The broker (also the body's `brokerName`).
    pub broker: String,
    pub body: BatchAckMessageRequestBody,
    /// The acks it carries (for their outcomes, and for single acks if the batch is refused).
    pub actions: Vec<HandleAction>,
}

/// Groups acks into one BATCH_ACK_MESSAGE per (broker, subscribed topic), with one `BatchAck` per
/// pop checkpoint: bit *i* acks the checkpoint's start offset + *i*, `t` is the subscribed topic
/// and `r` the retry flag (the broker rebuilds the retry topic from them), as a 5.x client
/// batches. Acks whose offset does not fit their checkpoint's bit set are returned apart, for
/// single ACK_MESSAGEs.
pub fn batch_acks(actions: Vec<HandleAction>) -> (Vec<AckBatch>, Vec<HandleAction>) {
    let mut batches: Vec<AckBatch> = Vec::new();
    // Where each action goes, its batch or (None) a single ack; worked out first so that the keys
    // can borrow from the actions.
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(actions.len());
    {
        let mut by_target: HashMap<(&str, &str), usize> = HashMap::new();
        let mut by_ck: HashMap<(usize, &str, i32, CheckpointRef), usize> = HashMap::new();
        // The slot of the previous action: a commit's acks come in runs of one queue and one
        // pop (the same key and broker handles), which skip the look-ups.
        let mut last: Option<(&HandleAction, usize, usize)> = None;
        for a in &actions {
            let ck = a.checkpoint;
            let bit = a
                .queue_offset
                .checked_sub(ck.start_offset)
                .and_then(|b| usize::try_from(b).ok())
                .filter(|b| *b < AckBitSet::MAX_BITS);
            let Some(bit) = bit else {
                slots.push(None);
                continue;
            };
            let same_run = last.filter(|(p, _, _)| {
                Arc::ptr_eq(&p.key, &a.key)
                    && Arc::ptr_eq(&p.broker, &a.broker)
                    && p.queue_id == a.queue_id
                    && p.checkpoint == ck
            });
            let (bi, ai) = match same_run {
                Some((_, bi, ai)) => (bi, ai),
                None => {
                    let bi = *by_target
                        .entry((&*a.broker, a.key.topic.as_str()))
                        .or_insert_with(|| {
                            batches.push(AckBatch {
                                broker: a.broker.to_string(),
                                body: BatchAckMessageRequestBody {
                                    acks: Vec::new(),
                                    broker_name: a.broker.to_string(),
                                },
                                actions: Vec::new(),
                            });
                            batches.len() - 1
                        });
                    let batch = &mut batches[bi];
                    let ai = *by_ck
                        .entry((bi, a.key.group.as_str(), a.queue_id, ck))
                        .or_insert_with(|| {
                            batch.body.acks.push(BatchAck {
                                consumer_group: a.key.group.clone(),
                                topic: a.key.topic.clone(),
                                retry: ck.retry.as_str().to_owned(),
                                start_offset: ck.start_offset,
                                queue_id: a.queue_id,
                                revive_queue_id: ck.revive_qid,
                                pop_time: ck.pop_time,
                                invisible_time: ck.invisible_time,
                                bit_set: AckBitSet::new(),
                            });
                            batch.body.acks.len() - 1
                        });
                    (bi, ai)
                }
            };
            last = Some((a, bi, ai));
            let batch = &mut batches[bi];
            batch.body.acks[ai].bit_set.set(bit);
            slots.push(Some(bi));
        }
    }
    let mut singles = Vec::new();
    for (a, slot) in actions.into_iter().zip(slots) {
        match slot {
            Some(bi) => batches[bi].actions.push(a),
            None => singles.push(a),
        }
    }
    (batches, singles)
}

impl Translator {
    /// The consumer committed `offset`: every held handle below it is acked.
    pub fn commit(&mut self, key: &VQueueKey, offset: i64) -> Vec<HandleAction> {
        let Some(vq) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        vq.committed = vq.committed.max(offset);
        let mut out = Vec::new();
        let mut sent_back = Vec::new();
        for (o, h) in vq.held.range_mut(..offset) {
            match h.state {
                HeldState::Outstanding => {
                    h.state = HeldState::Acking;
                    h.committed = true;
                    out.push(Self::action(&vq.key, *o, h, 0));
                }
                HeldState::SentBack => sent_back.push(*o),
                HeldState::Acking | HeldState::Prefetched => {}
            }
        }
        for o in sent_back {
            self.remove_held(key, o);
        }
        out
    }

    /// Acks still owed for committed messages (retries after transport failures). Only handles
    /// a commit covered since their delivery are owed: not records delivered at lower offsets
    /// after a rewind, nor past a commit ahead of what was delivered.
    pub fn pending_acks(&mut self) -> Vec<HandleAction> {
        let mut out = Vec::new();
        let mut sent_back = Vec::new();
        for vq in self.queues.values_mut() {
            for (o, h) in vq.held.iter_mut().filter(|(_, h)| h.committed) {
                match h.state {
                    HeldState::Outstanding => {
                        h.state = HeldState::Acking;
                        out.push(Self::action(&vq.key, *o, h, 0));
                    }
                    HeldState::SentBack => sent_back.push((vq.key.clone(), *o)),
                    HeldState::Acking | HeldState::Prefetched => {}
                }
            }
        }
        for (k, o) in sent_back {
            self.remove_held(&k, o);
        }
        out
    }
}
