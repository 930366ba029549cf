//! LOCK_BATCH_MQ (41) and UNLOCK_BATCH_MQ (42): queue locks for orderly consumers, with the
//! semantics of Apache's `RebalanceLockManager`.
//!
//! * A queue of a group is locked by one client id at a time. A lock request grants every
//!   requested queue that is free, expired, or already the requester's (which renews it: 4.x
//!   orderly consumers re-lock every 20 s); the answer lists the queues the requester now holds.
//! * A lock expires [`BrokerConfig::lock_expiry`] after its last renewal (Apache: 60 s), so a
//!   consumer that dies holding a queue gives it up without anyone's help.
//! * UNLOCK_BATCH_MQ releases the requester's own locks (others' are left alone).
//! * Queues are named with `brokerName`; a request may name queues of other brokers (a client
//!   sends one request per broker, but nothing stops a mixed set): only this broker's are
//!   considered, as Apache's broker does without `onlyThisBroker` forwarding.
//!
//! The table is bounded: at most [`MAX_LOCKS`] (group, queue) entries; expired entries are
//! dropped when a request needs room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocketmesh_filters::codec::body::{
    LockBatchRequestBody, LockBatchResponseBody, MessageQueue, UnlockBatchRequestBody,
};
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::RemotingCommand;

use super::processor::{error, reply};
use super::Broker;

/// Most (group, queue) locks held at once.
pub const MAX_LOCKS: usize = 100_000;

#[derive(Debug, Clone)]
struct Lock {
    client: String,
    renewed: Instant,
}

/// (group, topic, queue id) -> lock.
#[derive(Debug, Default)]
pub struct QueueLocks {
    t: Mutex<HashMap<(String, String, i32), Lock>>,
}

impl QueueLocks {
    /// Locks (or renews) each of `queues` for `client` unless another client holds it unexpired;
    /// returns the queues `client` holds afterwards, in request order.
    pub fn lock(
        &self,
        group: &str,
        client: &str,
        queues: &[(String, i32)],
        expiry: Duration,
        now: Instant,
    ) -> Vec<(String, i32)> {
        let mut t = self.t.lock();
        let mut granted = Vec::new();
        for (topic, queue) in queues {
            let key = (group.to_owned(), topic.clone(), *queue);
            let free = match t.get(&key) {
                None => true,
                Some(l) => l.client == client || now.duration_since(l.renewed) > expiry,
            };
            if !free {
                continue;
            }
            if !t.contains_key(&key) && t.len() >= MAX_LOCKS {
                t.retain(|_, l| now.duration_since(l.renewed) <= expiry);
                if t.len() >= MAX_LOCKS {
                    continue;
                }
            }
            t.insert(
                key,
                Lock {
                    client: client.to_owned(),
                    renewed: now,
                },
            );
            granted.push((topic.clone(), *queue));
        }
        granted
    }

    /// Releases `client`'s locks on `queues`.
    pub fn unlock(&self, group: &str, client: &str, queues: &[(String, i32)]) {
        let mut t = self.t.lock();
        for (topic, queue) in queues {
            let key = (group.to_owned(), topic.clone(), *queue);
            if t.get(&key).is_some_and(|l| l.client == client) {
                t.remove(&key);
            }
        }
    }

    /// The client holding `group`'s lock on the queue, if unexpired.
    pub fn holder(&self, group: &str, topic: &str, queue: i32, expiry: Duration) -> Option<String> {
        let t = self.t.lock();
        t.get(&(group.to_owned(), topic.to_owned(), queue))
            .filter(|l| l.renewed.elapsed() <= expiry)
            .map(|l| l.client.clone())
    }
}

/// This broker's queues of `mqs`, as (topic, queue id).
fn own(b: &Broker, mqs: &[MessageQueue]) -> Vec<(String, i32)> {
    mqs.iter()
        .filter(|q| q.broker_name == b.config.name)
        .map(|q| (q.topic.clone(), q.queue_id))
        .collect()
}

/// LOCK_BATCH_MQ (41).
pub fn lock_batch(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let body = match LockBatchRequestBody::parse(req.body()) {
        Ok(body) => body,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, format!("bad lock body: {e}")),
    };
    if body.consumer_group.is_empty() || body.client_id.is_empty() {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            "LOCK_BATCH_MQ needs consumerGroup and clientId",
        );
    }
    let granted = b.locks.lock(
        &body.consumer_group,
        &body.client_id,
        &own(b, &body.mq_set),
        b.config.lock_expiry,
        Instant::now(),
    );
    let answer = LockBatchResponseBody {
        lock_ok_mq_set: granted
            .into_iter()
            .map(|(topic, q)| MessageQueue::new(topic, b.config.name.clone(), q))
            .collect(),
    };
    reply(b, req, code::SUCCESS).with_body(answer.to_json())
}

/// UNLOCK_BATCH_MQ (42).
pub fn unlock_batch(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let body = match UnlockBatchRequestBody::parse(req.body()) {
        Ok(body) => body,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, format!("bad unlock body: {e}")),
    };
    b.locks
        .unlock(&body.consumer_group, &body.client_id, &own(b, &body.mq_set));
    reply(b, req, code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qs(ids: &[i32]) -> Vec<(String, i32)> {
        ids.iter().map(|&q| ("T".to_owned(), q)).collect()
    }

    #[test]
    fn one_client_per_queue_until_expiry_or_unlock() {
        let l = QueueLocks::default();
        let exp = Duration::from_secs(60);
        let t0 = Instant::now();
        assert_eq!(l.lock("G", "c1", &qs(&[0, 1]), exp, t0), qs(&[0, 1]));
        // Held by c1: c2 gets only the free queue.
        assert_eq!(l.lock("G", "c2", &qs(&[1, 2]), exp, t0), qs(&[2]));
        // Another group is independent.
        assert_eq!(l.lock("G2", "c2", &qs(&[0]), exp, t0), qs(&[0]));
        // Renewal by the holder keeps it past the first expiry.
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(l.lock("G", "c1", &qs(&[0, 1]), exp, t1), qs(&[0, 1]));
        let t2 = t0 + Duration::from_secs(100);
        assert!(l.lock("G", "c2", &qs(&[0]), exp, t2).is_empty());
        // Expired: c2 takes it.
        let t3 = t1 + Duration::from_secs(61);
        assert_eq!(l.lock("G", "c2", &qs(&[0]), exp, t3), qs(&[0]));
        // Unlock releases only one's own.
        l.unlock("G", "c1", &qs(&[0, 1]));
        assert_eq!(l.holder("G", "T", 0, Duration::MAX), Some("c2".into()));
        assert_eq!(l.holder("G", "T", 1, Duration::MAX), None);
    }
}
