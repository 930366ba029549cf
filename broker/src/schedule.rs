//! Delay levels: messages sent back for a retry, and messages with a `DELAY` property, are stored
//! in the schedule topic (queue = level - 1) with their real topic and queue in properties, and
//! moved to the real topic once their delay has passed.
//!
//! Going through the commit log makes delayed messages as durable as any other; the delivery
//! progress of each level is a consumer offset of an internal group, so a restart resumes where it
//! stopped (a message may be delivered twice across a crash, never lost). Within one level
//! messages are in delivery-time order, so each level is a simple queue scan.

use rocketmesh_filters::clock::unix_ms;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::codec::message::{property_keys, MessageExt};
use tokio_util::sync::CancellationToken;

use super::store::GetStatus;
use super::Broker;

/// The schedule topic.
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";
/// The internal group whose offsets record delivery progress.
pub const SCHEDULE_GROUP: &str = "rocketmesh_schedule";
/// Delays of levels 1..=18 (`messageDelayLevel` default).
pub const DELAY_LEVELS: [Duration; 18] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(180),
    Duration::from_secs(240),
    Duration::from_secs(300),
    Duration::from_secs(360),
    Duration::from_secs(420),
    Duration::from_secs(480),
    Duration::from_secs(540),
    Duration::from_secs(600),
    Duration::from_secs(1200),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(7200),
];
/// Highest delay level.
pub const MAX_DELAY_LEVEL: i32 = DELAY_LEVELS.len() as i32;
/// How often each level is checked.
const TICK: Duration = Duration::from_millis(100);

/// The delay of `level` (clamped to 1..=18).
pub fn delay_of(level: i32) -> Duration {
    DELAY_LEVELS[(level.clamp(1, MAX_DELAY_LEVEL) - 1) as usize]
}

/// The delay level a message asks for with its `DELAY` property, if any.
pub fn requested_level(msg: &MessageExt) -> Option<i32> {
    msg.properties
        .get(property_keys::DELAY)
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|l| *l > 0)
        .map(|l| l.min(MAX_DELAY_LEVEL))
}

/// Rewrites `msg` into the schedule topic for `level`.
pub fn wrap(mut msg: MessageExt, level: i32) -> MessageExt {
    let level = level.clamp(1, MAX_DELAY_LEVEL);
    msg.properties
        .insert(property_keys::REAL_TOPIC, msg.topic.as_str());
    msg.properties
        .insert(property_keys::REAL_QID, msg.queue_id.to_string());
    msg.properties
        .insert(property_keys::DELAY, level.to_string());
    msg.topic = SCHEDULE_TOPIC.to_owned();
    msg.queue_id = level - 1;
    msg
}

/// Restores a scheduled message's real topic and queue.
fn unwrap(mut msg: MessageExt) -> Option<MessageExt> {
    msg.topic = msg.properties.remove(property_keys::REAL_TOPIC)?;
    msg.queue_id = msg
        .properties
        .remove(property_keys::REAL_QID)
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    msg.properties.remove(property_keys::DELAY);
    Some(msg)
}

/// Delivers due messages of every level until `shutdown`.
pub async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for level in 1..=MAX_DELAY_LEVEL {
            if let Err(e) = deliver_level(&broker, level).await {
                tracing::warn!(level, "delayed delivery failed, will retry: {e}");
            }
        }
    }
}

async fn deliver_level(broker: &Broker, level: i32) -> Result<(), super::store::StoreError> {
    let qid = level - 1;
    let delay = delay_of(level).as_millis() as i64;
    loop {
        let offset = broker
            .offsets_query(SCHEDULE_GROUP, SCHEDULE_TOPIC, qid)
            .unwrap_or(0)
            .max(broker.min_offset(SCHEDULE_TOPIC, qid));
        let got = broker.get(SCHEDULE_TOPIC, qid, offset, 32, 1 << 20, None)?;
        if got.status != GetStatus::Found {
            return Ok(());
        }
        let now = unix_ms();
        let mut next = offset;
        for record in &got.records {
            let (msg, _) = rocketmesh_filters::codec::message::decode_record(record)
                .map_err(|e| super::store::StoreError::Internal(e.to_string()))?;
            if msg.store_timestamp + delay > now {
                broker.offsets_commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, qid, next);
                return Ok(());
            }
            match unwrap(msg) {
                Some(real) => {
                    let real = fresh(real);
                    broker.put(vec![real]).await?;
                }
                None => tracing::warn!(
                    level,
                    offset = next,
                    "scheduled message without REAL_TOPIC skipped"
                ),
            }
            next += 1;
            broker.offsets_commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, qid, next);
        }
        if got.records.len() < 32 {
            return Ok(());
        }
    }
}

/// Clears what the store assigned, so the message is appended as new.
fn fresh(mut msg: MessageExt) -> MessageExt {
    msg.commit_log_offset = 0;
    msg.queue_offset = 0;
    msg.store_timestamp = 0;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let msg = MessageExt {
            topic: "%RETRY%g".into(),
            queue_id: 0,
            ..MessageExt::default()
        };
        let w = wrap(msg, 3);
        assert_eq!(w.topic, SCHEDULE_TOPIC);
        assert_eq!(w.queue_id, 2);
        let u = unwrap(w).unwrap();
        assert_eq!(u.topic, "%RETRY%g");
        assert_eq!(u.queue_id, 0);
        assert!(u.properties.get(property_keys::DELAY).is_none());
        assert_eq!(delay_of(3), Duration::from_secs(10));
        assert_eq!(delay_of(99), Duration::from_secs(7200));
    }
}
