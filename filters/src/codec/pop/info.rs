//! The offset info strings of a POP_MESSAGE response: `startOffsetInfo`, `msgOffsetInfo` and
//! `orderCountInfo` (keys, parsing with bounds, building).

use super::*;

/// Key of the offset info maps: retry flag and queue id, displayed `"<retry>@<queueId>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// Topic type.
    pub retry: RetryFlag,
    /// Queue id.
    pub queue_id: i32,
}

impl QueueKey {
    /// A key.
    pub fn new(retry: RetryFlag, queue_id: i32) -> Self {
        Self { retry, queue_id }
    }

    /// The key of a message read from `topic` / `queue_id` (`getStartOffsetInfoMapKey`).
    pub fn for_topic(topic: &str, queue_id: i32) -> Self {
        Self::new(RetryFlag::from_topic(topic), queue_id)
    }
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.retry, self.queue_id)
    }
}

/// Key of the `orderCountInfo` map: per queue, or per message (`qo<queueId>%<queueOffset>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderCountKey {
    /// `"<retry> <queueId> <count>"`, key `"<retry>@<queueId>"`.
    Queue(QueueKey),
    /// `"<retry> qo<queueId>%<queueOffset> <count>"`, key `"<retry>@qo<queueId>%<queueOffset>"`.
    QueueOffset {
        /// Topic type.
        retry: RetryFlag,
        /// Queue id.
        queue_id: i32,
        /// Message offset.
        queue_offset: i64,
    },
}

impl OrderCountKey {
    /// The middle part of an entry (`<queueId>` or `qo<queueId>%<queueOffset>`).
    fn middle(&self) -> String {
        match self {
            Self::Queue(k) => k.queue_id.to_string(),
            Self::QueueOffset {
                queue_id,
                queue_offset,
                ..
            } => format!("qo{queue_id}%{queue_offset}"),
        }
    }

    fn retry(&self) -> RetryFlag {
        match self {
            Self::Queue(k) => k.retry,
            Self::QueueOffset { retry, .. } => *retry,
        }
    }
}

impl fmt::Display for OrderCountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.retry(), self.middle())
    }
}

/// One entry of an offset info string: index, the entry text and its three parts.
type InfoEntry<'a> = (usize, &'a str, [&'a str; 3]);

/// Splits an info string into `(index, entry, [retry, middle, value])`, with Java's tolerance of
/// trailing `;` and limits on the entry count.
fn entries<'a>(info: &'static str, s: &'a str) -> Result<Vec<InfoEntry<'a>>, PopError> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    // Java's String.split drops trailing empty strings.
    let trimmed = s.trim_end_matches(';');
    for (index, entry) in trimmed.split(';').enumerate() {
        if index >= MAX_POP_INFO_ENTRIES {
            return Err(PopError::TooManyEntries {
                info,
                limit: MAX_POP_INFO_ENTRIES,
            });
        }
        let mut parts = entry.split(' ');
        let fields = [parts.next(), parts.next(), parts.next()];
        match (fields, parts.next()) {
            ([Some(a), Some(b), Some(c)], None) => out.push((index, entry, [a, b, c])),
            _ => {
                return Err(PopError::InvalidEntry {
                    info,
                    index,
                    entry: quote(entry),
                    reason: "expected 3 space-separated parts",
                })
            }
        }
    }
    Ok(out)
}

fn invalid(info: &'static str, index: usize, entry: &str, reason: &'static str) -> PopError {
    PopError::InvalidEntry {
        info,
        index,
        entry: quote(entry),
        reason,
    }
}

fn queue_key(
    info: &'static str,
    index: usize,
    entry: &str,
    parts: [&str; 3],
) -> Result<QueueKey, PopError> {
    let retry =
        RetryFlag::parse(parts[0]).ok_or_else(|| invalid(info, index, entry, "bad retry flag"))?;
    let queue_id = parts[1]
        .parse()
        .map_err(|_| invalid(info, index, entry, "bad queue id"))?;
    Ok(QueueKey::new(retry, queue_id))
}

/// Parses `startOffsetInfo` (`"<retry> <queueId> <startOffset>"` entries joined by `;`). An empty
/// string gives an empty map.
pub fn parse_start_offset_info(s: &str) -> Result<HashMap<QueueKey, i64>, PopError> {
    const INFO: &str = "startOffsetInfo";
    let mut map = HashMap::new();
    for (index, entry, parts) in entries(INFO, s)? {
        let key = queue_key(INFO, index, entry, parts)?;
        let offset = parts[2]
            .parse()
            .map_err(|_| invalid(INFO, index, entry, "bad start offset"))?;
        if map.insert(key, offset).is_some() {
            return Err(PopError::DuplicateKey {
                info: INFO,
                key: key.to_string(),
            });
        }
    }
    Ok(map)
}

/// Parses `msgOffsetInfo` (`"<retry> <queueId> <off1>,<off2>,…"` entries joined by `;`). At most
/// [`MAX_POP_INFO_ENTRIES`] offsets in total.
pub fn parse_msg_offset_info(s: &str) -> Result<HashMap<QueueKey, Vec<i64>>, PopError> {
    const INFO: &str = "msgOffsetInfo";
    let mut map = HashMap::new();
    let mut total = 0usize;
    for (index, entry, parts) in entries(INFO, s)? {
        let key = queue_key(INFO, index, entry, parts)?;
        let mut offsets = Vec::new();
        for o in parts[2].split(',') {
            total += 1;
            if total > MAX_POP_INFO_ENTRIES {
                return Err(PopError::TooManyEntries {
                    info: INFO,
                    limit: MAX_POP_INFO_ENTRIES,
                });
            }
            offsets.push(
                o.parse()
                    .map_err(|_| invalid(INFO, index, entry, "bad message offset"))?,
            );
        }
        if map.insert(key, offsets).is_some() {
            return Err(PopError::DuplicateKey {
                info: INFO,
                key: key.to_string(),
            });
        }
    }
    Ok(map)
}

/// Parses `orderCountInfo`: entries `"<retry> <queueId> <count>"` or
/// `"<retry> qo<queueId>%<queueOffset> <count>"`, joined by `;`.
pub fn parse_order_count_info(s: &str) -> Result<HashMap<OrderCountKey, i32>, PopError> {
    const INFO: &str = "orderCountInfo";
    let mut map = HashMap::new();
    for (index, entry, parts) in entries(INFO, s)? {
        let key = if let Some(rest) = parts[1].strip_prefix("qo") {
            let retry = RetryFlag::parse(parts[0])
                .ok_or_else(|| invalid(INFO, index, entry, "bad retry flag"))?;
            let (qid, off) = rest
                .split_once('%')
                .ok_or_else(|| invalid(INFO, index, entry, "qo key without %"))?;
            OrderCountKey::QueueOffset {
                retry,
                queue_id: qid
                    .parse()
                    .map_err(|_| invalid(INFO, index, entry, "bad queue id"))?,
                queue_offset: off
                    .parse()
                    .map_err(|_| invalid(INFO, index, entry, "bad queue offset"))?,
            }
        } else {
            OrderCountKey::Queue(queue_key(INFO, index, entry, parts)?)
        };
        let count = parts[2]
            .parse()
            .map_err(|_| invalid(INFO, index, entry, "bad count"))?;
        if map.insert(key, count).is_some() {
            return Err(PopError::DuplicateKey {
                info: INFO,
                key: key.to_string(),
            });
        }
    }
    Ok(map)
}

/// Builds `startOffsetInfo` from `(retry, queueId, startOffset)` entries, in order.
pub fn build_start_offset_info(entries: &[(RetryFlag, i32, i64)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(r, q, o)| format!("{r} {q} {o}"))
        .collect();
    parts.join(";")
}

/// Builds `msgOffsetInfo` from `(retry, queueId, offsets)` entries, in order. Entries with no
/// offsets are left out (Java would write `"<retry> <qid> "`, which its own parser rejects).
pub fn build_msg_offset_info(entries: &[(RetryFlag, i32, &[i64])]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .filter(|(_, _, offs)| !offs.is_empty())
        .map(|(r, q, offs)| {
            let offs: Vec<String> = offs.iter().map(i64::to_string).collect();
            format!("{r} {q} {}", offs.join(","))
        })
        .collect();
    parts.join(";")
}

/// Builds `orderCountInfo` from `(key, count)` entries, in order.
pub fn build_order_count_info(entries: &[(OrderCountKey, i32)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, c)| format!("{} {} {c}", k.retry(), k.middle()))
        .collect();
    parts.join(";")
}
