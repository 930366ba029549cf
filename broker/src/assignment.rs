//! QUERY_ASSIGNMENT (400) and SET_MESSAGE_REQUEST_MODE (401): server-side load balancing for 5.x
//! Remoting clients, as Apache's broker (`QueryAssignmentProcessor`) answers them.
//!
//! * A mode is kept per (topic, group), set by SET_MESSAGE_REQUEST_MODE and persisted in
//!   `config/messageRequestMode.json`. Without one the mode is PULL (Apache's
//!   `defaultMessageRequestMode`); retry topics are always PULL and refuse a mode
//!   (NO_PERMISSION).
//! * Clustering, POP, `popShareQueueNum <= 0`: every consumer pops every queue, so the answer is
//!   one assignment per broker with queue id -1 ("all queues").
//! * Clustering, POP, `popShareQueueNum = N > 0`: the client's own share plus the shares of the N
//!   consumers after it in the sorted client id list; with more consumers than queues, one queue
//!   each (`index % queues`).
//! * Clustering, PULL: the client's share by the named strategy (`AVG`, `AVG_BY_CIRCLE`).
//! * Broadcasting: every queue.
//!
//! "No answer" (unknown topic, a group with no members here, an unknown strategy) is SUCCESS
//! with no `messageQueueAssignments` (`{}`): the client keeps its current queues. An empty list
//! means "drop every queue".
//!
//! Departure: Apache's broker takes the topic's queues from the nameserver's route (every
//! broker of the topic); the bundled broker knows its own queues only, which is the whole topic
//! for a standalone broker.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rocketmesh_filters::codec::body::{
    perm, MessageModel, MessageQueue, MessageQueueAssignment, MessageRequestMode,
    QueryAssignmentRequestBody, QueryAssignmentResponseBody, SetMessageRequestModeRequestBody,
};
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::pop::RETRY_GROUP_TOPIC_PREFIX;
use rocketmesh_filters::codec::RemotingCommand;
use serde::{Deserialize, Serialize};

use super::processor::{error, reply};
use super::topics::write_atomically;
use super::Broker;

/// Most (topic, group) modes kept (bounded against clients inventing names).
pub const MAX_MODES: usize = 100_000;
/// The answer meaning "no result, keep your queues" (Apache: a null set).
const NO_ANSWER: &[u8] = b"{}";

/// Why the persisted modes could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("loading {path}: {reason}")]
pub struct ModesError {
    path: PathBuf,
    reason: String,
}

/// The persisted form (Apache's `messageRequestModeMap`: topic -> group -> setting).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModesFile {
    #[serde(default)]
    message_request_mode_map: BTreeMap<String, BTreeMap<String, SetMessageRequestModeRequestBody>>,
}

/// The (topic, group) -> mode table.
#[derive(Debug)]
pub struct RequestModes {
    path: PathBuf,
    inner: Mutex<ModesFile>,
}

impl RequestModes {
    /// Opens the table persisted under `data_dir` (or starts empty).
    pub fn open(data_dir: &Path) -> Result<Self, ModesError> {
        let path = data_dir.join("config").join("messageRequestMode.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModesError {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModesFile::default(),
            Err(e) => {
                return Err(ModesError {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        Ok(Self {
            path,
            inner: Mutex::new(file),
        })
    }

    /// The setting for (topic, group), if one was set.
    pub fn get(&self, topic: &str, group: &str) -> Option<SetMessageRequestModeRequestBody> {
        self.inner
            .lock()
            .message_request_mode_map
            .get(topic)
            .and_then(|groups| groups.get(group))
            .cloned()
    }

    /// Sets and persists a mode; `false` when the table is full.
    fn set(&self, body: SetMessageRequestModeRequestBody) -> std::io::Result<bool> {
        let json = {
            let mut inner = self.inner.lock();
            let count: usize = inner
                .message_request_mode_map
                .values()
                .map(|g| g.len())
                .sum();
            let known = inner
                .message_request_mode_map
                .get(&body.topic)
                .is_some_and(|g| g.contains_key(&body.consumer_group));
            if !known && count >= MAX_MODES {
                return Ok(false);
            }
            inner
                .message_request_mode_map
                .entry(body.topic.clone())
                .or_default()
                .insert(body.consumer_group.clone(), body);
            serde_json::to_vec(&*inner).map_err(std::io::Error::other)?
        };
        write_atomically(&self.path, &json)?;
        Ok(true)
    }
}

/// SET_MESSAGE_REQUEST_MODE.
pub(crate) fn set_mode(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let body = match SetMessageRequestModeRequestBody::parse(req.body()) {
        Ok(body) => body,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
    };
    if body.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
        return error(
            b,
            req,
            code::NO_PERMISSION,
            "retry topic is not allowed to set mode",
        );
    }
    match b.modes.set(body) {
        Ok(true) => reply(b, req, code::SUCCESS),
        Ok(false) => error(b, req, code::SYSTEM_ERROR, "too many message request modes"),
        Err(e) => {
            tracing::error!("persisting message request modes: {e}");
            error(b, req, code::SYSTEM_ERROR, format!("persisting modes: {e}"))
        }
    }
}

/// QUERY_ASSIGNMENT.
pub(crate) fn query(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let body = match QueryAssignmentRequestBody::parse(req.body()) {
        Ok(body) => body,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
    };
    let setting = b
        .modes
        .get(&body.topic, &body.consumer_group)
        .unwrap_or_else(|| default_setting(&body.topic));
    let answer = match assign(b, &body, &setting) {
        Some(queues) => QueryAssignmentResponseBody {
            message_queue_assignments: queues
                .into_iter()
                .map(|message_queue| MessageQueueAssignment {
                    message_queue,
                    mode: setting.mode,
                    ..MessageQueueAssignment::default()
                })
                .collect(),
        }
        .to_json(),
        None => NO_ANSWER.to_vec(),
    };
    reply(b, req, code::SUCCESS).with_body(Bytes::from(answer))
}

/// Apache's default: PULL, and PULL always for retry topics.
fn default_setting(topic: &str) -> SetMessageRequestModeRequestBody {
    SetMessageRequestModeRequestBody {
        topic: topic.to_owned(),
        mode: MessageRequestMode::Pull,
        pop_share_queue_num: -1,
        ..SetMessageRequestModeRequestBody::default()
    }
}

/// The queues for the client, or `None` for "no answer".
fn assign(
    b: &Broker,
    body: &QueryAssignmentRequestBody,
    setting: &SetMessageRequestModeRequestBody,
) -> Option<Vec<MessageQueue>> {
    let cfg = b.topics.get(&body.topic)?;
    let queues = if perm::is_readable(cfg.perm) {
        cfg.read_queue_nums.max(0)
    } else {
        0
    };
    let all: Vec<MessageQueue> = (0..queues)
        .map(|q| MessageQueue::new(&body.topic, &b.config.name, q))
        .collect();
    if body.message_model == MessageModel::Broadcasting {
        return Some(all);
    }
    let mut cids = b.clients.group(&body.consumer_group)?.client_ids;
    cids.sort();
    let strategy = Strategy::named(&body.strategy_name)?;
    if setting.mode == MessageRequestMode::Pop {
        if setting.pop_share_queue_num <= 0 {
            return Some(if all.is_empty() {
                Vec::new()
            } else {
                vec![MessageQueue::new(&body.topic, &b.config.name, -1)]
            });
        }
        if all.is_empty() {
            return Some(Vec::new());
        }
        let Some(index) = cids.iter().position(|c| *c == body.client_id) else {
            return Some(Vec::new());
        };
        if cids.len() > all.len() {
            return Some(vec![all[index % all.len()].clone()]);
        }
        let mut out = strategy.allocate(&all, cids.len(), index);
        let share = usize::try_from(setting.pop_share_queue_num).unwrap_or(0);
        for step in 1..=share {
            out.extend(strategy.allocate(&all, cids.len(), (index + step) % cids.len()));
        }
        out.sort();
        out.dedup();
        return Some(out);
    }
    let index = cids.iter().position(|c| *c == body.client_id);
    Some(index.map_or_else(Vec::new, |i| strategy.allocate(&all, cids.len(), i)))
}

/// The allocation strategies Apache's broker knows by name.
#[derive(Debug, Clone, Copy)]
enum Strategy {
    /// `AVG`: consecutive blocks, the first `queues % clients` clients one more.
    Averagely,
    /// `AVG_BY_CIRCLE`: every `clients`-th queue from the client's index.
    ByCircle,
}

impl Strategy {
    fn named(name: &str) -> Option<Self> {
        match name {
            "AVG" => Some(Self::Averagely),
            "AVG_BY_CIRCLE" => Some(Self::ByCircle),
            _ => None,
        }
    }

    /// Client `index`'s share of `all` among `clients` clients.
    fn allocate(self, all: &[MessageQueue], clients: usize, index: usize) -> Vec<MessageQueue> {
        let n = all.len();
        if n == 0 || clients == 0 || index >= clients {
            return Vec::new();
        }
        match self {
            Self::Averagely => {
                let rem = n % clients;
                let size = if n <= clients {
                    1
                } else if rem > 0 && index < rem {
                    n / clients + 1
                } else {
                    n / clients
                };
                let start = if rem > 0 && index < rem {
                    index * size
                } else {
                    index * size + rem
                };
                let take = size.min(n.saturating_sub(start));
                (0..take).map(|i| all[(start + i) % n].clone()).collect()
            }
            Self::ByCircle => all.iter().skip(index).step_by(clients).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: i32) -> Vec<MessageQueue> {
        (0..n).map(|q| MessageQueue::new("T", "b", q)).collect()
    }

    fn ids(v: &[MessageQueue]) -> Vec<i32> {
        v.iter().map(|q| q.queue_id).collect()
    }

    #[test]
    fn averagely_gives_the_first_clients_the_remainder() {
        let all = queues(8);
        let got: Vec<Vec<i32>> = (0..3)
            .map(|i| ids(&Strategy::Averagely.allocate(&all, 3, i)))
            .collect();
        assert_eq!(got, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]);
        // More clients than queues: one each, the last ones nothing.
        let all = queues(2);
        let got: Vec<Vec<i32>> = (0..3)
            .map(|i| ids(&Strategy::Averagely.allocate(&all, 3, i)))
            .collect();
        assert_eq!(got, vec![vec![0], vec![1], vec![]]);
    }

    #[test]
    fn by_circle_deals_round_robin() {
        let all = queues(8);
        assert_eq!(ids(&Strategy::ByCircle.allocate(&all, 3, 1)), vec![1, 4, 7]);
        assert!(Strategy::ByCircle.allocate(&all, 3, 3).is_empty());
        assert!(Strategy::named("CONSISTENT_HASH").is_none());
    }

    #[test]
    fn modes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let modes = RequestModes::open(dir.path()).unwrap();
        let body = SetMessageRequestModeRequestBody {
            consumer_group: "g".into(),
            topic: "T".into(),
            mode: MessageRequestMode::Pop,
            pop_share_queue_num: 2,
        };
        assert!(modes.set(body.clone()).unwrap());
        let again = RequestModes::open(dir.path()).unwrap();
        assert_eq!(again.get("T", "g"), Some(body));
        assert_eq!(again.get("T", "other"), None);
    }
}
