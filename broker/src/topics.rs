//! The broker's topic table: which topics it serves, with how many queues and which permission.
//!
//! * `TBW102` (the SDKs' auto-create key) exists when auto-creation is on: 8 queues, perm 7
//!   (inherit + read + write), so a producer whose topic is unknown can fall back to its route.
//! * A send to an unknown topic creates it when auto-creation is on and the request names a
//!   default topic that exists with the inherit bit (as a Java broker does); queue counts are
//!   the smaller of what the producer asked and what the default topic has.
//! * Topics listed as read-only get perm READ only: pops and pulls work, sends are refused.
//! * `%RETRY%<group>` topics are created with 1 queue when a consumer group shows up.
//! * Every change bumps a data version and wakes subscribers (the registration task re-registers
//!   at once), and is persisted atomically to `DIR/config/topics.json`.

use parking_lot::RwLock;
use rocketmesh_filters::clock::unix_ms;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rocketmesh_filters::codec::body::{
    perm, DataVersion, TopicConfig, TopicConfigSerializeWrapper,
};
use thiserror::Error;
use tokio::sync::watch;

/// The SDKs' auto-create key topic.
pub const AUTO_CREATE_TOPIC_KEY: &str = "TBW102";
/// Queue count of the auto-create key topic.
pub const AUTO_CREATE_TOPIC_QUEUES: i32 = 8;
/// Most queues a topic may have.
pub const MAX_QUEUES: i32 = 1024;
/// Longest topic name (a 4.x stored record has a one-byte topic length).
pub const MAX_TOPIC_LEN: usize = 127;

/// Topic table errors.
#[derive(Debug, Error)]
pub enum TopicError {
    /// The topic does not exist and may not be created.
    #[error("topic[{topic}] not exist, apply first please!")]
    NotExist { topic: String },
    /// The topic name is not acceptable.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidName { topic: String, reason: &'static str },
    /// Persisting the table failed.
    #[error("cannot persist topics to {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The persisted table is unreadable.
    #[error("cannot load topics from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// Checks a topic name the way RocketMQ does: 1..=127 characters of `[%|a-zA-Z0-9_-]`.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            topic: topic.chars().take(200).collect(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("longer than 127 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        return bad("only letters, digits and % | _ - are allowed");
    }
    Ok(())
}

/// The topic table.
#[derive(Debug)]
pub struct TopicTable {
    path: PathBuf,
    auto_create: bool,
    read_only: HashSet<String>,
    inner: RwLock<Inner>,
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    topics: BTreeMap<String, TopicConfig>,
    version: DataVersion,
}

impl TopicTable {
    /// Opens the table persisted under `data_dir` (or starts empty).
    pub fn open(
        data_dir: &Path,
        auto_create: bool,
        read_only: impl IntoIterator<Item = String>,
    ) -> Result<Self, TopicError> {
        let path = data_dir.join("config").join("topics.json");
        let mut topics = match std::fs::read(&path) {
            Ok(bytes) => {
                TopicConfigSerializeWrapper::parse(&bytes)
                    .map_err(|e| TopicError::Load {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?
                    .topic_config_table
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(TopicError::Load {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        if auto_create {
            topics
                .entry(AUTO_CREATE_TOPIC_KEY.to_owned())
                .or_insert_with(|| TopicConfig {
                    topic_name: AUTO_CREATE_TOPIC_KEY.to_owned(),
                    read_queue_nums: AUTO_CREATE_TOPIC_QUEUES,
                    write_queue_nums: AUTO_CREATE_TOPIC_QUEUES,
                    perm: perm::PERM_INHERIT | perm::PERM_READ | perm::PERM_WRITE,
                    ..TopicConfig::default()
                });
        }
        let read_only: HashSet<String> = read_only.into_iter().collect();
        for cfg in topics.values_mut() {
            apply_read_only(&read_only, cfg);
        }
        let (changes, _) = watch::channel(0);
        let table = Self {
            path,
            auto_create,
            read_only,
            inner: RwLock::new(Inner {
                topics,
                version: DataVersion {
                    timestamp: unix_ms(),
                    counter: 0,
                    ..DataVersion::default()
                },
            }),
            changes,
        };
        Ok(table)
    }

    /// Whether sends may create topics.
    pub fn auto_create(&self) -> bool {
        self.auto_create
    }

    /// The config of `topic`, if it exists.
    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.inner.read().topics.get(topic).cloned()
    }

    /// Every topic.
    pub fn all(&self) -> Vec<TopicConfig> {
        self.inner.read().topics.values().cloned().collect()
    }

    /// The config of `topic` for a send; creates it from `default_topic` when allowed.
    pub fn for_send(
        &self,
        topic: &str,
        default_topic: Option<&str>,
        requested_queues: i32,
    ) -> Result<TopicConfig, TopicError> {
        if let Some(cfg) = self.get(topic) {
            return Ok(cfg);
        }
        validate_topic_name(topic)?;
        let template = default_topic
            .filter(|_| self.auto_create)
            .and_then(|d| self.get(d))
            .filter(|d| perm::is_inherited(d.perm));
        let Some(template) = template else {
            return Err(TopicError::NotExist {
                topic: topic.to_owned(),
            });
        };
        let queues = requested_queues.clamp(1, template.write_queue_nums.max(1));
        self.create(TopicConfig {
            topic_name: topic.to_owned(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: template.perm & !perm::PERM_INHERIT,
            topic_sys_flag: template.topic_sys_flag,
            ..TopicConfig::default()
        })
    }

    /// Ensures `topic` exists with at least `queues` queues (for system and retry topics, and
    /// topics the broker is told to serve).
    pub fn ensure(&self, topic: &str, queues: i32) -> Result<TopicConfig, TopicError> {
        if let Some(cfg) = self.get(topic) {
            return Ok(cfg);
        }
        validate_topic_name(topic)?;
        self.create(TopicConfig {
            topic_name: topic.to_owned(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            ..TopicConfig::default()
        })
    }

    /// Creates or replaces a topic (UPDATE_AND_CREATE_TOPIC).
    pub fn create(&self, mut cfg: TopicConfig) -> Result<TopicConfig, TopicError> {
        validate_topic_name(&cfg.topic_name)?;
        cfg.read_queue_nums = cfg.read_queue_nums.clamp(1, MAX_QUEUES);
        cfg.write_queue_nums = cfg.write_queue_nums.clamp(1, MAX_QUEUES);
        apply_read_only(&self.read_only, &mut cfg);
        let version = {
            let mut inner = self.inner.write();
            if inner.topics.get(&cfg.topic_name) == Some(&cfg) {
                return Ok(cfg);
            }
            inner.topics.insert(cfg.topic_name.clone(), cfg.clone());
            inner.version.counter += 1;
            inner.version.timestamp = unix_ms();
            self.persist(&inner)?;
            inner.version.counter
        };
        tracing::info!(topic = %cfg.topic_name, queues = cfg.write_queue_nums, perm = cfg.perm, "topic created or updated");
        self.changes.send_replace(version as u64);
        Ok(cfg)
    }

    /// The table as sent in REGISTER_BROKER.
    pub fn snapshot(&self) -> TopicConfigSerializeWrapper {
        let inner = self.inner.read();
        TopicConfigSerializeWrapper {
            data_version: inner.version,
            topic_config_table: inner.topics.clone(),
            ..TopicConfigSerializeWrapper::default()
        }
    }

    /// A receiver that changes whenever the table does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn persist(&self, inner: &Inner) -> Result<(), TopicError> {
        let wrapper = TopicConfigSerializeWrapper {
            data_version: inner.version,
            topic_config_table: inner.topics.clone(),
            ..TopicConfigSerializeWrapper::default()
        };
        write_atomically(&self.path, &wrapper.to_json()).map_err(|source| TopicError::Persist {
            path: self.path.clone(),
            source,
        })
    }
}

fn apply_read_only(read_only: &HashSet<String>, cfg: &mut TopicConfig) {
    if read_only.contains(&cfg.topic_name) {
        cfg.perm = perm::PERM_READ;
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a crash leaves either
/// the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rocketmesh-topics-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn auto_create_from_the_default_topic() {
        let d = dir("auto");
        let t = TopicTable::open(&d, true, []).unwrap();
        let mut changes = t.subscribe();
        assert!(t.get(AUTO_CREATE_TOPIC_KEY).is_some());
        assert!(matches!(
            t.for_send("New", None, 4),
            Err(TopicError::NotExist { .. })
        ));
        let cfg = t.for_send("New", Some(AUTO_CREATE_TOPIC_KEY), 4).unwrap();
        assert_eq!(cfg.write_queue_nums, 4);
        assert_eq!(cfg.perm, perm::PERM_READ | perm::PERM_WRITE);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        // asking for more queues than the template has is capped
        let big = t.for_send("Big", Some(AUTO_CREATE_TOPIC_KEY), 100).unwrap();
        assert_eq!(big.write_queue_nums, AUTO_CREATE_TOPIC_QUEUES);
        // persisted
        let again = TopicTable::open(&d, true, []).unwrap();
        assert_eq!(again.get("New"), Some(cfg));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_auto_create_and_read_only() {
        let d = dir("ro");
        let t = TopicTable::open(&d, false, ["RO".to_owned()]).unwrap();
        assert!(t.get(AUTO_CREATE_TOPIC_KEY).is_none());
        assert!(t.for_send("X", Some(AUTO_CREATE_TOPIC_KEY), 4).is_err());
        let ro = t.ensure("RO", 4).unwrap();
        assert_eq!(ro.perm, perm::PERM_READ);
        assert!(matches!(
            t.ensure("bad topic!", 1),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(t.ensure(&"x".repeat(128), 1).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
