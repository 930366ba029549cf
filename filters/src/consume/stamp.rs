//! Re-stamping a pop response's records into a virtual queue's offset space.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::headers::PopMessageResponseHeader;
use crate::codec::message::{
    decode_records, encode_record, patch_records, property_keys, MessageVersion,
};
use crate::codec::pop::{is_retry_topic, PopResponseInfo};

use super::minted::Minted;
use super::queue::{Held, HeldState, VQueueKey};
use super::{ConsumeError, Translator};

impl Translator {
    /// Stamps a pop response's records at virtual offsets `start..` of `key` (which must exist)
    /// and holds their handles in `state`. Returns (the offset after the last, body, each record's byte length).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stamp(
        &mut self,
        key: &VQueueKey,
        start: i64,
        broker: &str,
        header: &PopMessageResponseHeader,
        mut body: BytesMut,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
        state: HeldState,
    ) -> Result<(i64, BytesMut, VecDeque<usize>), ConsumeError> {
        let info = PopResponseInfo::from_header(header)?;
        let shared_broker: Arc<str> = Arc::from(broker);
        let mut next = start;
        let mut phys = self.next_phys;
        // Several pops of one queue can be in flight (a client re-sending a pull that timed
        // out, a prefetch): each was granted the room free when it started. Records past the
        // room left now are cut off, neither held nor delivered; the broker redelivers them
        // after their invisible time.
        let room = self.queues.get(key).map_or(0, |q| {
            self.cfg.max_held_per_queue.saturating_sub(q.held.len())
        });
        let mut new_held: Vec<(i64, Held)> = Vec::with_capacity(32);
        let mut lens: VecDeque<usize> = VecDeque::with_capacity(32);
        patch_records(&mut body, |rec| -> Result<(), ConsumeError> {
            if lens.len() >= room {
                return Ok(());
            }
            lens.push_back(rec.len());
            let pop_ck = rec.property(property_keys::POP_CK)?.map(str::to_owned);
            let handle = info.handle_for_shared(
                rec.topic(),
                rec.queue_id(),
                rec.queue_offset(),
                pop_ck.as_deref(),
                &shared_broker,
            )?;
            new_held.push((
                next,
                Held {
                    broker: shared_broker.clone(),
                    commit_log_offset: phys,
                    real_commit_log_offset: rec.commit_log_offset(),
                    reconsume_times: rec.reconsume_times(),
                    first_pop_ms: now_ms,
                    visible_at_ms: handle.pop_time + handle.invisible_time,
                    handle,
                    renewing: false,
                    committed: false,
                    state,
                },
            ));
            self.minted.remember(
                phys,
                Minted {
                    broker: shared_broker.clone(),
                    real_commit_log_offset: rec.commit_log_offset(),
                    topic: key.topic.clone(),
                    virtual_queue: key.queue,
                },
            );
            rec.set_queue_id(key.queue);
            rec.set_queue_offset(next);
            rec.set_commit_log_offset(phys);
            if let Some(host) = store_host {
                rec.set_store_host(host);
            }
            next += 1;
            phys += 1;
            Ok(())
        })?;
        self.next_phys = phys;
        body.truncate(lens.iter().sum());
        // Pop-retry messages come from `%RETRY%<group>_<topic>`; a legacy consumer only
        // accepts its subscribed topic (and `%RETRY%<group>` with RETRY_TOPIC), so those records
        // are re-encoded under the subscribed topic. Their handles keep the retry topic for acks.
        if new_held.iter().any(|(_, h)| h.handle.retry.is_retry()) {
            let mut msgs = decode_records(&body.clone().freeze())?;
            let mut out = BytesMut::with_capacity(body.len());
            lens.clear();
            for m in &mut msgs {
                if m.topic != key.topic && is_retry_topic(&m.topic) {
                    m.topic = key.topic.clone();
                    m.version = MessageVersion::for_topic_len(m.topic.len());
                }
                let before = out.len();
                encode_record(m, &mut out)?;
                lens.push_back(out.len() - before);
            }
            body = out;
        }
        let vq = self.queues.get_mut(key).expect("the caller checked");
        for (o, h) in new_held {
            self.by_phys
                .insert(h.commit_log_offset, (vq.key.clone(), o));
            if vq.held.insert(o, h).is_none() {
                self.held += 1;
            }
        }
        Ok((next, body, lens))
    }
}
