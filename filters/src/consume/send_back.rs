//! CONSUMER_SEND_MSG_BACK: change-invisible-time with the level's delay, or the dead-letter
//! forward past the max reconsume times.

use super::handles::HandleAction;
use super::queue::HeldState;
use super::Translator;

/// What to do with a CONSUMER_SEND_MSG_BACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBackPlan {
    /// Change the handle's invisible time to the retry delay.
    Retry(HandleAction),
    /// Past the max reconsume times: forward the send-back to this broker (its DLQ), naming the
    /// message by its real commit log offset, then ack.
    DeadLetter {
        broker: String,
        commit_log_offset: i64,
        ack: HandleAction,
    },
    /// The message is not held for this consumer (e.g. after a reconnect).
    Unknown,
}

/// RocketMQ's delay levels (messageDelayLevel), ms.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// The delay of a send-back: `level` > 0 picks that level; 0 lets the broker decide, which is
/// level 3 + reconsumeTimes (as Apache's broker does); clamped to the last level.
pub fn send_back_delay_ms(level: i32, reconsume_times: i32) -> i64 {
    let level = if level > 0 {
        level
    } else {
        3 + reconsume_times.max(0)
    };
    DELAY_LEVELS_MS[(level.clamp(1, DELAY_LEVELS_MS.len() as i32) - 1) as usize]
}

impl Translator {
    /// CONSUMER_SEND_MSG_BACK of the message at (virtual) `commit_log_offset`.
    pub fn send_back(
        &mut self,
        conn: u64,
        group: &str,
        commit_log_offset: i64,
        delay_level: i32,
        max_reconsume_times: i32,
    ) -> SendBackPlan {
        let Some((key, o)) = self
            .by_phys
            .get(&commit_log_offset)
            .filter(|(k, _)| k.conn == conn && k.group == group)
            .cloned()
        else {
            return SendBackPlan::Unknown;
        };
        let Some(h) = self.queues.get_mut(&key).and_then(|q| q.held.get_mut(&o)) else {
            return SendBackPlan::Unknown;
        };
        if h.state != HeldState::Outstanding {
            return SendBackPlan::Unknown;
        }
        let max = if max_reconsume_times < 0 {
            16
        } else {
            max_reconsume_times
        };
        if h.reconsume_times >= max {
            h.state = HeldState::Acking;
            let ack = Self::action(&key, o, h, 0);
            return SendBackPlan::DeadLetter {
                broker: h.broker.to_string(),
                commit_log_offset: h.real_commit_log_offset,
                ack,
            };
        }
        h.state = HeldState::SentBack;
        let delay = send_back_delay_ms(delay_level, h.reconsume_times);
        SendBackPlan::Retry(Self::action(&key, o, h, delay))
    }

    /// The change-invisible-time of send-back `action` failed: the message stays held so it is
    /// acked or redelivered normally.
    pub fn send_back_failed(&mut self, action: &HandleAction) {
        if let Some(h) = self
            .queues
            .get_mut(&*action.key)
            .and_then(|q| q.held.get_mut(&action.offset))
            .filter(|h| h.commit_log_offset == action.serial)
        {
            if h.state == HeldState::SentBack {
                h.state = HeldState::Outstanding;
            }
        }
    }
}
