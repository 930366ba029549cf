//! Retry, dead-letter and pop-retry topic names (`MixAll`, `KeyBuilder`).

use super::*;

/// The 4.x retry topic of a group: `%RETRY%<group>` (`MixAll.getRetryTopic`).
pub fn retry_topic_v4(group: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}")
}

/// The dead-letter topic of a group: `%DLQ%<group>` (`MixAll.getDLQTopic`).
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_GROUP_TOPIC_PREFIX}{group}")
}

/// Pop-retry topic v1: `%RETRY%<group>_<topic>` (`KeyBuilder.buildPopRetryTopicV1`).
pub fn pop_retry_topic_v1(group: &str, topic: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}{POP_RETRY_SEPARATOR_V1}{topic}")
}

/// Pop-retry topic v2: `%RETRY%<group>+<topic>` (`KeyBuilder.buildPopRetryTopicV2`).
pub fn pop_retry_topic_v2(group: &str, topic: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}{POP_RETRY_SEPARATOR_V2}{topic}")
}

/// True for any `%RETRY%` topic (4.x retry or pop retry).
pub fn is_retry_topic(topic: &str) -> bool {
    topic.starts_with(RETRY_GROUP_TOPIC_PREFIX)
}

/// True for a `%DLQ%` topic.
pub fn is_dlq_topic(topic: &str) -> bool {
    topic.starts_with(DLQ_GROUP_TOPIC_PREFIX)
}

/// Splits a pop-retry topic of `group` into its version and original topic: `%RETRY%<group>+t`
/// is v2, `%RETRY%<group>_t` is v1 (v2 is tried first, as `KeyBuilder.parseNormalTopic` does).
/// `None` for other topics, including the 4.x `%RETRY%<group>` and an empty original topic.
pub fn parse_pop_retry_topic(retry_topic: &str, group: &str) -> Option<(RetryFlag, String)> {
    let rest = retry_topic
        .strip_prefix(RETRY_GROUP_TOPIC_PREFIX)?
        .strip_prefix(group)?;
    let (flag, topic) = if let Some(t) = rest.strip_prefix(POP_RETRY_SEPARATOR_V2) {
        (RetryFlag::RetryV2, t)
    } else if let Some(t) = rest.strip_prefix(POP_RETRY_SEPARATOR_V1) {
        (RetryFlag::RetryV1, t)
    } else {
        return None;
    };
    (!topic.is_empty()).then(|| (flag, topic.to_owned()))
}

/// What a POP_MESSAGE response header says about the handles of the messages in its body, in the
/// form a client needs to rebuild each message's `POP_CK` (protocol notes 6.2, the client's
/// `processPopResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopResponseInfo {
    /// `popTime` of the response.
    pub pop_time: i64,
    /// `invisibleTime` of the response.
    pub invisible_time: i64,
    /// `reviveQid` of the response.
    pub revive_qid: i32,
    /// Parsed `startOffsetInfo` (checkpoint start offset per queue key).
    pub start_offsets: HashMap<QueueKey, i64>,
    /// Parsed `msgOffsetInfo` (offsets returned per queue key, in order).
    pub msg_offsets: HashMap<QueueKey, Vec<i64>>,
}

impl PopResponseInfo {
    /// Parses the header strings; absent offset infos (very old brokers) give empty maps.
    pub fn new(
        pop_time: i64,
        invisible_time: i64,
        revive_qid: i32,
        start_offset_info: Option<&str>,
        msg_offset_info: Option<&str>,
    ) -> Result<Self, PopError> {
        Ok(Self {
            pop_time,
            invisible_time,
            revive_qid,
            start_offsets: match start_offset_info {
                Some(s) if !s.is_empty() => parse_start_offset_info(s)?,
                _ => HashMap::new(),
            },
            msg_offsets: match msg_offset_info {
                Some(s) if !s.is_empty() => parse_msg_offset_info(s)?,
                _ => HashMap::new(),
            },
        })
    }

    /// Parses a typed POP_MESSAGE response header.
    pub fn from_header(
        header: &crate::codec::headers::PopMessageResponseHeader,
    ) -> Result<Self, PopError> {
        Self::new(
            header.pop_time,
            header.invisible_time,
            header.revive_qid,
            header.start_offset_info.as_deref(),
            header.msg_offset_info.as_deref(),
        )
    }

    /// The handle of one returned message, given the record's topic, queue id, queue offset and
    /// `POP_CK` property (present on retry records the broker re-encoded), and the name of the
    /// broker that served the pop.
    ///
    /// A record carrying `POP_CK` keeps it. Otherwise the checkpoint start offset comes from
    /// `startOffsetInfo` for the record's (retry flag, queue id), falling back, as the Java client
    /// does for brokers that send none, to the first offset returned for that queue, and then to
    /// the record's own offset.
    pub fn handle_for(
        &self,
        record_topic: &str,
        queue_id: i32,
        queue_offset: i64,
        pop_ck: Option<&str>,
        broker_name: &str,
    ) -> Result<PopHandle, PopError> {
        let broker: Arc<str> = Arc::from(broker_name);
        self.handle_for_shared(record_topic, queue_id, queue_offset, pop_ck, &broker)
    }

    /// [`PopResponseInfo::handle_for`] with the broker's name shared by every handle of the pop.
    pub fn handle_for_shared(
        &self,
        record_topic: &str,
        queue_id: i32,
        queue_offset: i64,
        pop_ck: Option<&str>,
        broker_name: &Arc<str>,
    ) -> Result<PopHandle, PopError> {
        if let Some(ck) = pop_ck.filter(|ck| !ck.is_empty()) {
            return PopHandle::parse(ck);
        }
        let key = QueueKey::for_topic(record_topic, queue_id);
        let ck_queue_offset = self
            .start_offsets
            .get(&key)
            .copied()
            .or_else(|| self.msg_offsets.get(&key).and_then(|v| v.first().copied()))
            .unwrap_or(queue_offset);
        Ok(PopHandle {
            ck_queue_offset,
            pop_time: self.pop_time,
            invisible_time: self.invisible_time,
            revive_qid: self.revive_qid,
            retry: key.retry,
            broker_name: broker_name.clone(),
            queue_id,
            queue_offset,
        })
    }
}
