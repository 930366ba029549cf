//! What `/config_dump` shows of the xDS client, built when asked from the resource tables.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::config::XdsMode;
use super::counters::ClientStats;
use crate::cache::{Resources, Table};
use crate::resources::{CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, VIRTUAL_HOST_TYPE};

/// A SotW client holding more virtual hosts than this lists none (the whole catalogue would be
/// a very large page).
pub(crate) const MAX_SOTW_DUMPED_VHOSTS: usize = 1000;

/// The last rejected response.
#[derive(Debug, Clone, Serialize)]
pub struct NackInfo {
    pub type_url: String,
    pub nonce: String,
    pub message: String,
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// One held resource, for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct DumpedResource {
    pub type_url: &'static str,
    pub name: String,
    pub version: String,
    pub resource: serde_json::Value,
}

/// What `/config_dump` shows of the xDS client.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigDump {
    pub server: String,
    pub mode: XdsMode,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_nack: Option<NackInfo>,
    pub generation: u64,
    pub topics_ready: Vec<String>,
    pub topics_missing: Vec<String>,
    pub resources: Vec<DumpedResource>,
    pub stats: ClientStats,
}

/// The held resources, taken under the tables' lock: names, versions and shared values only,
/// so the lock is not held while they are turned into JSON ([`render`]).
pub(crate) struct Held {
    type_url: &'static str,
    name: String,
    version: String,
    value: Arc<dyn ErasedSerialize>,
}

/// `serde::Serialize` is not object safe; this is, for `serde_json::to_value`.
trait ErasedSerialize: Send + Sync {
    fn to_json(&self) -> serde_json::Value;
}

impl<T: Serialize + Send + Sync> ErasedSerialize for T {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The entries of `res`, cheap to take (clones of names and `Arc`s).
pub(crate) fn collect(res: &Resources) -> Vec<Held> {
    fn add<T: Serialize + Send + Sync + 'static>(
        out: &mut Vec<Held>,
        type_url: &'static str,
        table: &Table<T>,
    ) {
        out.extend(table.held.iter().map(|(name, h)| Held {
            type_url,
            name: name.clone(),
            version: h.version.clone(),
            value: h.value.clone(),
        }));
    }
    let mut out = Vec::with_capacity(res.vhosts.len() + res.clusters.len());
    add(&mut out, VIRTUAL_HOST_TYPE, &res.vhosts);
    add(&mut out, CLUSTER_TYPE, &res.clusters);
    add(&mut out, LOAD_ASSIGNMENT_TYPE, &res.load_assignments);
    out
}

/// The dumped resources, sorted by type and name.
pub(crate) fn render(held: Vec<Held>) -> Vec<DumpedResource> {
    let mut out: Vec<DumpedResource> = held
        .into_iter()
        .map(|h| DumpedResource {
            type_url: h.type_url,
            resource: h.value.to_json(),
            name: h.name,
            version: h.version,
        })
        .collect();
    out.sort_by(|a, b| (a.type_url, &a.name).cmp(&(b.type_url, &b.name)));
    out
}
