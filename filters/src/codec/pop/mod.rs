//! Pop specifics: the message handle (`extraInfo` / `POP_CK` property), the offset info strings of
//! a POP_MESSAGE response, and retry / dead-letter topic naming
//! (`docs/remoting-protocol.md` sections 6.1, 6.2 and 6.5).
//!
//! Facts verified against Apache RocketMQ `ExtraInfoUtil` (remoting module, 5.x) and `KeyBuilder`:
//!
//! * `buildExtraInfo` has two overloads, both joining with a single space (`KEY_SEPARATOR`):
//!   the 7-argument form writes `ckQueueOffset popTime invisibleTime reviveQid retry brokerName
//!   queueId`; the 8-argument form appends `queueOffset`. `retry` is derived from the topic:
//!   `2` for a v2 pop-retry topic (`%RETRY%` prefix and a `+`), `1` for any other `%RETRY%`
//!   topic, else `0` (4.9.x only knows `0`/`1`).
//! * The client's `changeInvisibleTime` callback rebuilds the handle with the 7-argument form,
//!   `ckQueueOffset = offset` of the request, the new popTime / invisibleTime / reviveQid from
//!   the response, then appends `" " + offset` (see [`PopHandle::after_change_invisible`]).
//! * The getters index the split string: `[0]` ckQueueOffset, `[1]` popTime, `[2]`
//!   invisibleTime, `[3]` reviveQid, `[4]` retry, `[5]` brokerName, `[6]` queueId, `[7]`
//!   queueOffset; `isOrder` is `reviveQid == 999` (`KeyBuilder.POP_ORDER_REVIVE_QUEUE`).
//! * `startOffsetInfo` / `msgOffsetInfo` / `orderCountInfo` are `;`-joined entries of three
//!   space-separated parts, keyed `"<retry>@<queueId>"`; the order-count entry's second part may
//!   be `qo<queueId>%<queueOffset>`. Duplicate keys are an error.
//! * Pop-retry topics are `%RETRY%<group>_<topic>` (v1) and `%RETRY%<group>+<topic>` (v2).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

/// Prefix of retry topics (`MixAll.RETRY_GROUP_TOPIC_PREFIX`).
pub const RETRY_GROUP_TOPIC_PREFIX: &str = "%RETRY%";
/// Prefix of dead-letter topics (`MixAll.DLQ_GROUP_TOPIC_PREFIX`).
pub const DLQ_GROUP_TOPIC_PREFIX: &str = "%DLQ%";
/// The reviveQid marking an order pop (`KeyBuilder.POP_ORDER_REVIVE_QUEUE`).
pub const POP_ORDER_REVIVE_QUEUE: i32 = 999;
/// Separator of pop-retry topics v1.
pub const POP_RETRY_SEPARATOR_V1: char = '_';
/// Separator of pop-retry topics v2.
pub const POP_RETRY_SEPARATOR_V2: char = '+';
/// Most entries (and, for `msgOffsetInfo`, most offsets) accepted in one offset info string.
pub const MAX_POP_INFO_ENTRIES: usize = 1024;

/// Longest value quoted back in an error message.
const MAX_QUOTED: usize = 64;

fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

/// A pop handle or offset info string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PopError {
    /// The handle does not have exactly 8 space-separated fields.
    #[error("pop handle {value:?} has {found} space-separated fields, expected 8")]
    FieldCount {
        /// The handle (at most 64 characters).
        value: String,
        /// Fields found.
        found: usize,
    },
    /// A handle field does not parse.
    #[error("pop handle field {index} ({name}) has invalid value {value:?}")]
    InvalidField {
        /// Field index (0-7).
        index: usize,
        /// Field name.
        name: &'static str,
        /// The value (at most 64 characters).
        value: String,
    },
    /// An offset info entry is malformed.
    #[error("{info} entry {index} {entry:?} is invalid: {reason}")]
    InvalidEntry {
        /// `startOffsetInfo`, `msgOffsetInfo` or `orderCountInfo`.
        info: &'static str,
        /// Entry index.
        index: usize,
        /// The entry (at most 64 characters).
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two entries have the same key.
    #[error("{info} has duplicate key {key}")]
    DuplicateKey {
        /// The info string.
        info: &'static str,
        /// The key.
        key: String,
    },
    /// More entries or offsets than [`MAX_POP_INFO_ENTRIES`].
    #[error("{info} has more than {limit} entries")]
    TooManyEntries {
        /// The info string.
        info: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// The topic type of a popped message (extraInfo field 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum RetryFlag {
    /// `0`: a normal topic.
    #[default]
    Normal,
    /// `1`: pop-retry topic v1, `%RETRY%<group>_<topic>`.
    RetryV1,
    /// `2`: pop-retry topic v2, `%RETRY%<group>+<topic>`.
    RetryV2,
}

impl RetryFlag {
    /// The wire character.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "0",
            Self::RetryV1 => "1",
            Self::RetryV2 => "2",
        }
    }

    /// Parses `0`, `1` or `2`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "0" => Some(Self::Normal),
            "1" => Some(Self::RetryV1),
            "2" => Some(Self::RetryV2),
            _ => None,
        }
    }

    /// The flag for a message read from `topic` (`ExtraInfoUtil.getRetry(topic)`): v2 for a
    /// `%RETRY%` topic containing `+`, v1 for any other `%RETRY%` topic, else normal.
    pub fn from_topic(topic: &str) -> Self {
        if !is_retry_topic(topic) {
            Self::Normal
        } else if topic.contains(POP_RETRY_SEPARATOR_V2) {
            Self::RetryV2
        } else {
            Self::RetryV1
        }
    }

    /// True for the retry flags.
    pub fn is_retry(self) -> bool {
        self != Self::Normal
    }
}

impl fmt::Display for RetryFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const FIELD_NAMES: [&str; 8] = [
    "ckQueueOffset",
    "popTime",
    "invisibleTime",
    "reviveQid",
    "retry",
    "brokerName",
    "queueId",
    "queueOffset",
];

/// A pop message handle: the `extraInfo` of ack / changeInvisibleTime requests and the value of
/// the `POP_CK` property (`ExtraInfoUtil.buildExtraInfo`, 8-field form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PopHandle {
    /// Field 0: Start offset of the checkpoint this message belongs to.
    pub ck_queue_offset: i64,
    /// Field 1: Pop time (ms).
    pub pop_time: i64,
    /// Field 2: Invisible time (ms).
    pub invisible_time: i64,
    /// Field 3: Revive queue id; 999 for order pop.
    pub revive_qid: i32,
    /// Field 4: Topic type.
    pub retry: RetryFlag,
    /// Field 5: Broker that popped the message (route acks there). Shared: every handle of a
    /// pop names the same broker.
    pub broker_name: Arc<str>,
    /// Field 6: Queue actually read (the retry queue for retry messages).
    pub queue_id: i32,
    /// Field 7: Offset of the message in that queue.
    pub queue_offset: i64,
}

impl PopHandle {
    /// Parses the 8-field form. Exactly 8 fields separated by single spaces; numeric fields must
    /// parse, the retry flag must be `0`/`1`/`2` and the broker name must not be empty.
    pub fn parse(s: &str) -> Result<Self, PopError> {
        let fields: Vec<&str> = s.split(' ').take(9).collect();
        if fields.len() != 8 {
            return Err(PopError::FieldCount {
                value: quote(s),
                found: if fields.len() == 9 {
                    s.split(' ').count()
                } else {
                    fields.len()
                },
            });
        }
        let bad = |index: usize| PopError::InvalidField {
            index,
            name: FIELD_NAMES[index],
            value: quote(fields[index]),
        };
        fn num<T: FromStr>(v: &str) -> Option<T> {
            v.parse().ok()
        }
        let broker_name = fields[5];
        if broker_name.is_empty() {
            return Err(bad(5));
        }
        Ok(Self {
            ck_queue_offset: num(fields[0]).ok_or_else(|| bad(0))?,
            pop_time: num(fields[1]).ok_or_else(|| bad(1))?,
            invisible_time: num(fields[2]).ok_or_else(|| bad(2))?,
            revive_qid: num(fields[3]).ok_or_else(|| bad(3))?,
            retry: RetryFlag::parse(fields[4]).ok_or_else(|| bad(4))?,
            broker_name: Arc::from(broker_name),
            queue_id: num(fields[6]).ok_or_else(|| bad(6))?,
            queue_offset: num(fields[7]).ok_or_else(|| bad(7))?,
        })
    }

    /// The 8-field string (`ExtraInfoUtil.buildExtraInfo`, 8-argument form).
    pub fn to_extra_info(&self) -> String {
        self.to_string()
    }

    /// True for an order pop (`reviveQid == 999`).
    pub fn is_order(&self) -> bool {
        self.revive_qid == POP_ORDER_REVIVE_QUEUE
    }

    /// The topic an ack / changeInvisibleTime must name (`ExtraInfoUtil.getRealTopic`):
    /// `topic` itself, or the pop-retry topic of `group` for retry messages.
    pub fn real_topic(&self, topic: &str, group: &str) -> String {
        match self.retry {
            RetryFlag::Normal => topic.to_owned(),
            RetryFlag::RetryV1 => pop_retry_topic_v1(group, topic),
            RetryFlag::RetryV2 => pop_retry_topic_v2(group, topic),
        }
    }

    /// The handle a Java client holds after a successful CHANGE_MESSAGE_INVISIBLETIME: the
    /// checkpoint now starts at the message's own offset (the broker wrote a single-message
    /// checkpoint), with the response's popTime, invisibleTime and reviveQid.
    pub fn after_change_invisible(
        &self,
        pop_time: i64,
        invisible_time: i64,
        revive_qid: i32,
    ) -> Self {
        Self {
            ck_queue_offset: self.queue_offset,
            pop_time,
            invisible_time,
            revive_qid,
            ..self.clone()
        }
    }

    /// The key of this handle's queue in the offset info maps.
    pub fn queue_key(&self) -> QueueKey {
        QueueKey::new(self.retry, self.queue_id)
    }
}

impl fmt::Display for PopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {}",
            self.ck_queue_offset,
            self.pop_time,
            self.invisible_time,
            self.revive_qid,
            self.retry,
            self.broker_name,
            self.queue_id,
            self.queue_offset
        )
    }
}

impl FromStr for PopHandle {
    type Err = PopError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

mod info;
mod topics;

pub use info::*;
pub use topics::*;

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLE: &str = "1200 1712345678901 60000 5 0 broker-a 3 1203";

    #[test]
    fn handle_round_trip() {
        let h = PopHandle::parse(HANDLE).unwrap();
        assert_eq!(
            h,
            PopHandle {
                ck_queue_offset: 1200,
                pop_time: 1_712_345_678_901,
                invisible_time: 60_000,
                revive_qid: 5,
                retry: RetryFlag::Normal,
                broker_name: "broker-a".into(),
                queue_id: 3,
                queue_offset: 1203,
            }
        );
        assert_eq!(h.to_extra_info(), HANDLE);
        assert_eq!(h.to_string(), HANDLE);
        assert_eq!(HANDLE.parse::<PopHandle>().unwrap(), h);
        assert!(!h.is_order());
        assert_eq!(h.queue_key().to_string(), "0@3");
        assert_eq!(h.real_topic("T", "G"), "T");
        let order = PopHandle {
            revive_qid: 999,
            retry: RetryFlag::RetryV1,
            ..h.clone()
        };
        assert!(order.is_order());
        assert_eq!(order.real_topic("T", "G"), "%RETRY%G_T");
        let v2 = PopHandle::parse("0 1 2 3 2 b 0 7").unwrap();
        assert_eq!(v2.real_topic("T", "G"), "%RETRY%G+T");
        let moved = h.after_change_invisible(1_712_345_700_000, 30_000, 6);
        assert_eq!(
            moved.to_extra_info(),
            "1203 1712345700000 30000 6 0 broker-a 3 1203"
        );
    }

    #[test]
    fn handle_errors() {
        let e = PopHandle::parse("1200 1712345678901 60000 5 0 broker-a 3").unwrap_err();
        assert_eq!(
            e,
            PopError::FieldCount {
                value: "1200 1712345678901 60000 5 0 broker-a 3".into(),
                found: 7
            }
        );
        let e = PopHandle::parse(&format!("{HANDLE} 9 9")).unwrap_err();
        assert!(matches!(e, PopError::FieldCount { found: 10, .. }));
        let e = PopHandle::parse("1200 x 60000 5 0 broker-a 3 1203").unwrap_err();
        assert!(matches!(
            e,
            PopError::InvalidField {
                index: 1,
                name: "popTime",
                ..
            }
        ));
        assert!(e.to_string().contains("popTime"));
        let e = PopHandle::parse("1200 1 60000 5 7 broker-a 3 1203").unwrap_err();
        assert!(matches!(e, PopError::InvalidField { index: 4, .. }));
        let e = PopHandle::parse("1200 1 60000 5 0  3 1203").unwrap_err();
        assert!(matches!(e, PopError::InvalidField { index: 5, .. }));
        let e = PopHandle::parse("1200 1 60000 5 0 b 3 99999999999999999999").unwrap_err();
        assert!(matches!(e, PopError::InvalidField { index: 7, .. }));
        assert!(PopHandle::parse("").is_err());
    }

    #[test]
    fn offset_infos() {
        let s = parse_start_offset_info("0 3 1200;1 0 57").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[&QueueKey::new(RetryFlag::Normal, 3)], 1200);
        assert_eq!(s[&QueueKey::new(RetryFlag::RetryV1, 0)], 57);
        let m = parse_msg_offset_info("0 3 1200,1201,1203;1 0 57").unwrap();
        assert_eq!(m[&QueueKey::new(RetryFlag::Normal, 3)], [1200, 1201, 1203]);
        assert_eq!(m[&QueueKey::new(RetryFlag::RetryV1, 0)], [57]);
        assert!(parse_start_offset_info("").unwrap().is_empty());
        assert_eq!(parse_start_offset_info("2 1 5;").unwrap().len(), 1);

        assert_eq!(
            build_start_offset_info(&[(RetryFlag::Normal, 3, 1200), (RetryFlag::RetryV1, 0, 57)]),
            "0 3 1200;1 0 57"
        );
        assert_eq!(
            build_msg_offset_info(&[
                (RetryFlag::Normal, 3, &[1200, 1201, 1203][..]),
                (RetryFlag::RetryV2, 9, &[][..]),
                (RetryFlag::RetryV1, 0, &[57][..]),
            ]),
            "0 3 1200,1201,1203;1 0 57"
        );
    }

    #[test]
    fn offset_info_errors() {
        for bad in [
            "0 3",
            "0 3 1200 9",
            "0 3 x",
            "5 3 1",
            "0 x 1",
            "0 3 1;;1 0 2",
            "0  3 1",
            "0 3 1,,2",
        ] {
            assert!(parse_start_offset_info(bad).is_err(), "{bad}");
            assert!(parse_msg_offset_info(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_start_offset_info("0 3 1;0 3 2"),
            Err(PopError::DuplicateKey { .. })
        ));
        let many: Vec<String> = (0..=MAX_POP_INFO_ENTRIES)
            .map(|i| format!("0 {i} 1"))
            .collect();
        assert!(matches!(
            parse_start_offset_info(&many.join(";")),
            Err(PopError::TooManyEntries { .. })
        ));
        let offs: Vec<String> = (0..=MAX_POP_INFO_ENTRIES).map(|i| i.to_string()).collect();
        assert!(matches!(
            parse_msg_offset_info(&format!("0 1 {}", offs.join(","))),
            Err(PopError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn order_count_info() {
        let m = parse_order_count_info("0 3 2;1 qo0%57 4").unwrap();
        let k1 = OrderCountKey::Queue(QueueKey::new(RetryFlag::Normal, 3));
        let k2 = OrderCountKey::QueueOffset {
            retry: RetryFlag::RetryV1,
            queue_id: 0,
            queue_offset: 57,
        };
        assert_eq!(m[&k1], 2);
        assert_eq!(m[&k2], 4);
        assert_eq!(k2.to_string(), "1@qo0%57");
        assert_eq!(
            build_order_count_info(&[(k1, 2), (k2, 4)]),
            "0 3 2;1 qo0%57 4"
        );
        assert!(parse_order_count_info("0 qo3 1").is_err());
        assert!(parse_order_count_info("0 qox%1 1").is_err());
    }

    #[test]
    fn topics() {
        assert_eq!(retry_topic_v4("G"), "%RETRY%G");
        assert_eq!(dlq_topic("G"), "%DLQ%G");
        assert_eq!(pop_retry_topic_v1("G", "T"), "%RETRY%G_T");
        assert_eq!(pop_retry_topic_v2("G", "T"), "%RETRY%G+T");
        assert!(is_retry_topic("%RETRY%G"));
        assert!(!is_retry_topic("T"));
        assert!(is_dlq_topic("%DLQ%G"));
        assert_eq!(
            parse_pop_retry_topic("%RETRY%G_T", "G"),
            Some((RetryFlag::RetryV1, "T".into()))
        );
        assert_eq!(
            parse_pop_retry_topic("%RETRY%G+T_x", "G"),
            Some((RetryFlag::RetryV2, "T_x".into()))
        );
        assert_eq!(parse_pop_retry_topic("%RETRY%G", "G"), None);
        assert_eq!(parse_pop_retry_topic("%RETRY%G_", "G"), None);
        assert_eq!(parse_pop_retry_topic("%RETRY%H_T", "G"), None);
        assert_eq!(parse_pop_retry_topic("T", "G"), None);
        assert_eq!(RetryFlag::from_topic("%RETRY%G+T"), RetryFlag::RetryV2);
        assert_eq!(RetryFlag::from_topic("%RETRY%G_T"), RetryFlag::RetryV1);
        assert_eq!(RetryFlag::from_topic("T"), RetryFlag::Normal);
        assert_eq!(QueueKey::for_topic("%RETRY%G_T", 0).to_string(), "1@0");
    }

    #[test]
    fn handles_from_a_pop_response() {
        let info = PopResponseInfo::new(
            1712345678901,
            60000,
            5,
            Some("0 3 1200;1 0 57"),
            Some("0 3 1200,1201,1203;1 0 57"),
        )
        .unwrap();
        let h = info
            .handle_for("TopicA", 3, 1203, None, "broker-a")
            .unwrap();
        assert_eq!(
            h.to_extra_info(),
            "1200 1712345678901 60000 5 0 broker-a 3 1203"
        );
        let r = info
            .handle_for("%RETRY%G_TopicA", 0, 57, None, "broker-a")
            .unwrap();
        assert_eq!(r.retry, RetryFlag::RetryV1);
        assert_eq!(r.ck_queue_offset, 57);
        let kept = info
            .handle_for("TopicA", 3, 9, Some("1 2 3 4 0 broker-b 6 7"), "broker-a")
            .unwrap();
        assert_eq!(&*kept.broker_name, "broker-b");
        let old = PopResponseInfo::new(1, 2, 3, None, None).unwrap();
        assert_eq!(
            old.handle_for("T", 1, 44, None, "b")
                .unwrap()
                .ck_queue_offset,
            44
        );
        assert!(PopResponseInfo::new(1, 2, 3, Some("garbage"), None).is_err());
    }
}
