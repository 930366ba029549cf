//! Traffic management on the control plane: per-topic policies (write weights, readable and
//! writable brokers) and topic migrations between brokers, set through the admin server's JSON
//! API ([`api`]) and kept on disk so a restart resumes them.
//!
//! A policy is laid over the topic's registered route by the [`Catalog`] (the admin API's
//! policy for a topic wins over the static file's) and reaches sidecars as Envoy shapes: weights
//! as `LbEndpoint.load_balancing_weight`, readable / writable as the `envoy.lb` subset keys.
//!
//! A migration of topic T from broker A to broker B ([`migrate`]) is a state machine:
//!
//! ```text
//! Preparing --T on B, registered--> Draining --A drained for every group--> Done
//!     |                                 |
//!     +------------- abort -------------+--> Aborted (A writable again; B read-only for T)
//! Preparing --B never gets T (timeout)--> Failed (nothing changed)
//! ```
//!
//! Everything here is bounded: [`MAX_POLICIES`] topics with a policy, [`MAX_MIGRATIONS`]
//! migrations remembered (finished ones are dropped oldest first).

pub mod api;
pub mod migrate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rocketmesh_filters::clock::unix_ms;
use rocketmesh_xds::catalog::Catalog;
use rocketmesh_xds::model::TopicPolicy;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::namesrv::NameServer;

/// Most topics with a policy set through the API.
pub const MAX_POLICIES: usize = 4096;
/// Most migrations kept (active ones are never dropped).
pub const MAX_MIGRATIONS: usize = 256;

/// Why a traffic request was refused. Nothing changed.
#[derive(Debug, Error)]
pub enum TrafficError {
    /// Malformed or meaningless input (400).
    #[error("{0}")]
    Invalid(String),
    /// A topic or broker the control plane does not know (404).
    #[error("{0}")]
    Unknown(String),
    /// The request conflicts with what is going on (409), e.g. a migration in progress.
    #[error("{0}")]
    Conflict(String),
    /// The state could not be saved (500); the change was not applied.
    #[error("saving the traffic state: {0}")]
    Persist(String),
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// The topic is being created on the target and waited for in its registration.
    Preparing,
    /// The target takes the writes; the source is read-only until it is drained.
    Draining,
    /// The source has left the topic's route.
    Done,
    /// Aborted: the source takes the writes again.
    Aborted,
    /// The target never got the topic; nothing changed.
    Failed,
}

impl MigrationState {
    /// Whether the migration still runs.
    pub fn is_active(self) -> bool {
        matches!(self, MigrationState::Preparing | MigrationState::Draining)
    }
}

/// One migration and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub topic: String,
    pub from: String,
    pub to: String,
    pub state: MigrationState,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The topic's API policy before the migration (restored, plus B read-only, by an abort).
    #[serde(default)]
    pub prior: Option<TopicPolicy>,
    /// Messages on the source not consumed yet, per group, at the last check (popped but not
    /// acked and pop-retry messages included).
    #[serde(default)]
    pub remaining: BTreeMap<String, i64>,
    /// Consecutive checks that found the source drained.
    #[serde(default)]
    pub drained_checks: u32,
    /// The last error met (a broker that could not be asked, ...); the migration goes on.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What is kept on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    policies: BTreeMap<String, TopicPolicy>,
    #[serde(default)]
    migrations: BTreeMap<String, Migration>,
}

/// The traffic manager of one control plane. Cheap to share (`Arc`).
pub struct Traffic {
    catalog: Arc<Catalog>,
    nameserver: Arc<NameServer>,
    /// `<state dir>/traffic.json`; none: in memory only (lost on restart).
    path: Option<PathBuf>,
    state: Mutex<Saved>,
    opts: migrate::MigrateOptions,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Traffic {
    /// Loads the saved state from `state_dir` (if any) and applies its policies to `catalog`.
    /// A malformed state file stops the start, as a malformed static file does.
    pub fn open(
        catalog: Arc<Catalog>,
        nameserver: Arc<NameServer>,
        state_dir: Option<&Path>,
        opts: migrate::MigrateOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let path = state_dir.map(|d| d.join("traffic.json"));
        let saved = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)?;
                serde_json::from_str::<Saved>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            _ => Saved::default(),
        };
        for (topic, policy) in &saved.policies {
            catalog.set_policy(topic, Some(policy.clone()));
        }
        let active = saved
            .migrations
            .values()
            .filter(|m| m.state.is_active())
            .count();
        tracing::info!(
            policies = saved.policies.len(),
            active_migrations = active,
            state = ?path,
            "traffic state loaded"
        );
        Ok(Arc::new(Traffic {
            catalog,
            nameserver,
            path,
            state: Mutex::new(saved),
            opts,
        }))
    }

    /// Writes `s` to disk (temp file, fsync, rename).
    fn save(&self, s: &Saved) -> Result<(), TrafficError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let json = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        };
        write().map_err(|e| TrafficError::Persist(format!("{}: {e}", path.display())))
    }

    /// Applies `change` to a copy of the state, saves it, then makes it current and pushes the
    /// policies of `topics` to the catalog. Nothing changes when `change` or the save fails.
    fn update<T>(
        &self,
        topics: &[&str],
        change: impl FnOnce(&mut Saved) -> Result<T, TrafficError>,
    ) -> Result<T, TrafficError> {
        let mut s = self.state.lock();
        let mut next = s.clone();
        let out = change(&mut next)?;
        self.save(&next)?;
        *s = next;
        for t in topics {
            self.catalog.set_policy(t, s.policies.get(*t).cloned());
        }
        Ok(out)
    }

    /// The brokers of `topic`'s registered route.
    fn route_brokers(&self, topic: &str) -> Result<Vec<String>, TrafficError> {
        let route = self
            .catalog
            .topic_route(topic)
            .ok_or_else(|| TrafficError::Unknown(format!("topic {topic} is not registered")))?;
        Ok(route
            .brokers
            .iter()
            .map(|b| b.broker_name.clone())
            .collect())
    }

    fn no_migration(s: &Saved, topic: &str) -> Result<(), TrafficError> {
        match s.migrations.get(topic) {
            Some(m) if m.state.is_active() => Err(TrafficError::Conflict(format!(
                "topic {topic} is migrating from {} to {} ({:?}); abort it first",
                m.from, m.to, m.state
            ))),
            _ => Ok(()),
        }
    }

    /// Sets `topic`'s write weights (brokers not named take no writes). Refused while the
    /// topic migrates, for an unknown topic or broker, and for weights summing to 0.
    pub fn set_weights(
        &self,
        topic: &str,
        weights: BTreeMap<String, u32>,
    ) -> Result<TopicPolicy, TrafficError> {
        if weights.is_empty() {
            return Err(TrafficError::Invalid("no weights given".into()));
        }
        let brokers = self.route_brokers(topic)?;
        if let Some(b) = weights.keys().find(|b| !brokers.contains(b)) {
            return Err(TrafficError::Unknown(format!(
                "broker {b} does not serve topic {topic} (brokers: {})",
                brokers.join(", ")
            )));
        }
        self.update(&[topic], |s| {
            Self::no_migration(s, topic)?;
            let mut p = s.policies.get(topic).cloned().unwrap_or_default();
            p.weights = weights;
            p.validate().map_err(TrafficError::Invalid)?;
            Self::put_policy(s, topic, p.clone())?;
            Ok(p)
        })
    }

    /// Replaces `topic`'s policy (None or an empty one clears it).
    pub fn set_policy(
        &self,
        topic: &str,
        policy: Option<TopicPolicy>,
    ) -> Result<Option<TopicPolicy>, TrafficError> {
        let policy = policy.filter(|p| !p.is_empty());
        if let Some(p) = &policy {
            p.validate().map_err(TrafficError::Invalid)?;
            let brokers = self.route_brokers(topic)?;
            let named = p.weights.keys().chain(&p.no_read).chain(&p.no_write);
            if let Some(b) = named.into_iter().find(|b| !brokers.contains(b)) {
                return Err(TrafficError::Unknown(format!(
                    "broker {b} does not serve topic {topic}"
                )));
            }
            if brokers.iter().all(|b| !p.readable(b)) {
                return Err(TrafficError::Invalid(format!(
                    "no broker would be readable for {topic}"
                )));
            }
        }
        self.update(&[topic], |s| {
            Self::no_migration(s, topic)?;
            match &policy {
                Some(p) => Self::put_policy(s, topic, p.clone())?,
                None => {
                    s.policies.remove(topic);
                }
            }
            Ok(policy.clone())
        })
    }

    fn put_policy(s: &mut Saved, topic: &str, p: TopicPolicy) -> Result<(), TrafficError> {
        if !s.policies.contains_key(topic) && s.policies.len() >= MAX_POLICIES {
            return Err(TrafficError::Conflict(format!(
                "at most {MAX_POLICIES} topics may have a policy"
            )));
        }
        if p.is_empty() {
            s.policies.remove(topic);
        } else {
            s.policies.insert(topic.to_owned(), p);
        }
        Ok(())
    }

    /// The API policy of `topic`.
    pub fn policy(&self, topic: &str) -> Option<TopicPolicy> {
        self.state.lock().policies.get(topic).cloned()
    }

    /// Every migration, by topic.
    pub fn migrations(&self) -> Vec<Migration> {
        self.state.lock().migrations.values().cloned().collect()
    }

    /// The migration of `topic`, if any.
    pub fn migration(&self, topic: &str) -> Option<Migration> {
        self.state.lock().migrations.get(topic).cloned()
    }

    /// Starts migrating `topic` from broker `from` to broker `to` (see the module docs).
    pub fn start_migration(
        &self,
        topic: &str,
        from: &str,
        to: &str,
    ) -> Result<Migration, TrafficError> {
        if from == to {
            return Err(TrafficError::Invalid(format!(
                "cannot migrate {topic} from {from} to itself"
            )));
        }
        let brokers = self.route_brokers(topic)?;
        if !brokers.iter().any(|b| b == from) {
            return Err(TrafficError::Unknown(format!(
                "broker {from} does not serve topic {topic} (brokers: {})",
                brokers.join(", ")
            )));
        }
        if self.nameserver.master_addr(to).is_none() {
            return Err(TrafficError::Unknown(format!(
                "broker {to} is not registered (no master)"
            )));
        }
        self.update(&[], |s| {
            Self::no_migration(s, topic)?;
            if s.migrations
                .values()
                .filter(|m| m.state.is_active())
                .count()
                >= MAX_MIGRATIONS
            {
                return Err(TrafficError::Conflict(format!(
                    "at most {MAX_MIGRATIONS} migrations may run at once"
                )));
            }
            if s.policies.get(topic).is_some_and(|p| p.excludes(from)) {
                return Err(TrafficError::Invalid(format!(
                    "broker {from} has already left topic {topic}'s route"
                )));
            }
            let now = unix_ms();
            let m = Migration {
                topic: topic.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                state: MigrationState::Preparing,
                started_ms: now,
                updated_ms: now,
                prior: s.policies.get(topic).cloned(),
                remaining: BTreeMap::new(),
                drained_checks: 0,
                last_error: None,
            };
            s.migrations.insert(topic.to_owned(), m.clone());
            prune(s);
            Ok(m)
        })
    }

    /// Aborts `topic`'s migration: the source takes the writes again, the target stays
    /// readable (what was sent to it is consumed) but takes no writes.
    pub fn abort(&self, topic: &str) -> Result<Migration, TrafficError> {
        self.update(&[topic], |s| {
            let Some(m) = s.migrations.get_mut(topic) else {
                return Err(TrafficError::Unknown(format!("no migration of {topic}")));
            };
            if !m.state.is_active() {
                return Err(TrafficError::Conflict(format!(
                    "the migration of {topic} is already {:?}",
                    m.state
                )));
            }
            let was_draining = m.state == MigrationState::Draining;
            m.state = MigrationState::Aborted;
            m.updated_ms = unix_ms();
            let m = m.clone();
            if was_draining {
                let mut p = m.prior.clone().unwrap_or_default();
                p.no_write.remove(&m.from);
                p.no_read.remove(&m.from);
                p.no_write.insert(m.to.clone());
                p.weights.clear();
                Self::put_policy(s, topic, p)?;
            }
            Ok(m)
        })
    }
}

/// Drops the oldest finished migrations past [`MAX_MIGRATIONS`].
fn prune(s: &mut Saved) {
    while s.migrations.len() > MAX_MIGRATIONS {
        let oldest = s
            .migrations
            .values()
            .filter(|m| !m.state.is_active())
            .min_by_key(|m| m.updated_ms)
            .map(|m| m.topic.clone());
        match oldest {
            Some(t) => {
                s.migrations.remove(&t);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::namesrv::NamesrvOptions;
    use rocketmesh_xds::catalog::CatalogOptions;
    use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};

    fn catalog() -> Arc<Catalog> {
        let c = Arc::new(Catalog::new(CatalogOptions::default()));
        let b = |name: &str| BrokerQueues {
            broker_name: name.into(),
            cluster_name: "C".into(),
            addrs: BTreeMap::from([(0, format!("127.0.0.1:1{}", name.len()))]),
            perm: 6,
            read_queue_num: 4,
            write_queue_num: 4,
        };
        c.set_topic(TopicRouteSpec {
            topic: "T".into(),
            brokers: vec![b("a"), b("bb")],
        });
        c
    }

    fn open(dir: &Path, c: &Arc<Catalog>) -> Arc<Traffic> {
        let ns = Arc::new(NameServer::new(c.clone(), None, NamesrvOptions::default()));
        Traffic::open(c.clone(), ns, Some(dir), Default::default()).unwrap()
    }

    #[test]
    fn policies_and_migrations_survive_a_restart_and_bad_input_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog();
        let t = open(dir.path(), &c);
        let w = BTreeMap::from([("a".to_owned(), 90), ("bb".to_owned(), 10)]);
        t.set_weights("T", w.clone()).unwrap();
        let zero = BTreeMap::from([("a".to_owned(), 0), ("bb".to_owned(), 0)]);
        assert!(matches!(
            t.set_weights("T", zero),
            Err(TrafficError::Invalid(_))
        ));
        let unknown = BTreeMap::from([("zz".to_owned(), 1)]);
        assert!(matches!(
            t.set_weights("T", unknown),
            Err(TrafficError::Unknown(_))
        ));
        // A migration as the driver leaves it mid-way.
        t.update(&[], |s| {
            s.migrations.insert(
                "T".into(),
                Migration {
                    topic: "T".into(),
                    from: "a".into(),
                    to: "bb".into(),
                    state: MigrationState::Draining,
                    started_ms: 1,
                    updated_ms: 1,
                    prior: None,
                    remaining: BTreeMap::from([("g".into(), 7)]),
                    drained_checks: 0,
                    last_error: None,
                },
            );
            Ok(())
        })
        .unwrap();
        drop(t);

        // A new control plane (fresh catalog) gets both back from disk.
        let c2 = catalog();
        let t2 = open(dir.path(), &c2);
        assert_eq!(c2.policy("T").map(|p| p.weights.clone()), Some(w));
        let m = t2.migration("T").unwrap();
        assert_eq!((m.state, m.remaining["g"]), (MigrationState::Draining, 7));
        // Abort while draining: writes back on the source, the target read-only.
        let m = t2.abort("T").unwrap();
        assert_eq!(m.state, MigrationState::Aborted);
        let p = c2.policy("T").unwrap();
        assert!(p.writable("a") && !p.writable("bb") && p.readable("bb"));
    }
}
