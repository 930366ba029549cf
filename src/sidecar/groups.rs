//! The sidecar's client table: which client (id, downstream connection) is in which consumer and
//! producer group, fed by HEART_BEAT / UNREGISTER_CLIENT and connection closes, with expiry.
//!
//! Unlike Envoy's filter (a table per downstream connection that never adds a second member),
//! one table per sidecar, new members are added, expired members are not listed, and the table is
//! bounded.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::body::{
    Connection as ClientConnection, ConsumeType, ConsumerConnection, HeartbeatData, MessageModel,
};

use crate::remoting::Connection;

/// Most groups and most members per group kept.
pub const MAX_GROUPS: usize = 10_000;
pub const MAX_MEMBERS: usize = 1_000;

#[derive(Debug, Clone)]
struct Member {
    conn: Arc<Connection>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    consumers: HashMap<String, HashMap<String, Member>>,
    producers: HashMap<String, HashMap<String, Member>>,
    /// The last heartbeat body per client (what the sidecar repeats to brokers on its behalf).
    heartbeats: HashMap<String, (HeartbeatData, Instant)>,
    /// What the latest heartbeat said of each consumer group.
    kinds: HashMap<String, GroupKind>,
    /// Groups that lock queues (LOCK_BATCH_MQ): orderly consumers.
    orderly: BTreeSet<String>,
    /// Each heartbeating client's language name and version (from its command header), for
    /// GET_CONSUMER_CONNECTION_LIST.
    sdks: HashMap<String, (&'static str, i32)>,
}

impl Tables {
    /// Drops what is known of groups that have no member left (their kind, their orderliness).
    fn forget_left_groups(&mut self) {
        let consumers = &self.consumers;
        self.kinds.retain(|g, _| consumers.contains_key(g));
        self.orderly.retain(|g| consumers.contains_key(g));
        let heartbeats = &self.heartbeats;
        self.sdks.retain(|c, _| heartbeats.contains_key(c));
    }
}

/// What a consumer group's heartbeat says about how it consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupKind {
    pub message_model: MessageModel,
    pub consume_type: ConsumeType,
}

/// How the sidecar serves a consumer's PULLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// Clustered push consumers: PULL becomes POP, commits become ACKs (the translator).
    Pop,
    /// Relayed to the real (broker, queue) behind the virtual queue with the client's own
    /// (real) offsets.
    Direct(DirectReason),
}

/// Why a consumer's pulls are relayed rather than translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectReason {
    /// Every consumer of a broadcasting group gets every message; offsets are the client's.
    Broadcasting,
    /// A pull consumer (`CONSUME_ACTIVELY`) picks its queues and offsets itself.
    PullConsumer,
    /// An orderly consumer (it locks queues): one consumer at a time per queue, by the
    /// brokers' locks, with offsets committed to the broker.
    Orderly,
    /// No heartbeat of the group yet, and a pull without the suspend flag: only pull consumers
    /// pull like that (push consumers always long-poll).
    NoSuspend,
}

impl DirectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DirectReason::Broadcasting => "broadcasting",
            DirectReason::PullConsumer => "pull consumer",
            DirectReason::Orderly => "orderly (queue locks)",
            DirectReason::NoSuspend => "pull without suspend, group unknown",
        }
    }
}

/// The mode for a pull of a group of kind `kind` (None: no heartbeat seen) that locks queues
/// or not (`orderly`), `suspend` = the pull's suspend flag.
pub fn pull_mode(kind: Option<GroupKind>, orderly: bool, suspend: bool) -> PullMode {
    match kind {
        _ if orderly => PullMode::Direct(DirectReason::Orderly),
        Some(k) if k.message_model == MessageModel::Broadcasting => {
            PullMode::Direct(DirectReason::Broadcasting)
        }
        Some(k) if k.consume_type == ConsumeType::ConsumeActively => {
            PullMode::Direct(DirectReason::PullConsumer)
        }
        Some(_) => PullMode::Pop,
        None if suspend => PullMode::Pop,
        None => PullMode::Direct(DirectReason::NoSuspend),
    }
}

/// Consumer / producer group membership.
#[derive(Debug)]
pub struct Groups {
    expiry: Duration,
    t: Mutex<Tables>,
    /// Woken when a consumer group gains a member (the brokers are told at once, not at the
    /// next periodic heartbeat).
    joined: tokio::sync::Notify,
}

fn upsert(
    map: &mut HashMap<String, HashMap<String, Member>>,
    group: &str,
    client: &str,
    conn: &Arc<Connection>,
    now: Instant,
) -> bool {
    if !map.contains_key(group) && map.len() >= MAX_GROUPS {
        return false;
    }
    let members = map.entry(group.to_owned()).or_default();
    if let Some(m) = members.get_mut(client) {
        m.last_seen = now;
        if m.conn.id() != conn.id() {
            m.conn = conn.clone();
        }
        return false;
    }
    if members.len() >= MAX_MEMBERS {
        return false;
    }
    members.insert(
        client.to_owned(),
        Member {
            conn: conn.clone(),
            last_seen: now,
        },
    );
    true
}

impl Groups {
    pub fn new(expiry: Duration) -> Self {
        Groups {
            expiry,
            t: Mutex::new(Tables::default()),
            joined: tokio::sync::Notify::new(),
        }
    }

    /// Records a heartbeat of a client written in `sdk` = (language name, version). Returns
    /// the consumer groups that gained a member.
    pub fn heartbeat(
        &self,
        conn: &Arc<Connection>,
        hb: &HeartbeatData,
        sdk: (&'static str, i32),
    ) -> Vec<String> {
        let now = Instant::now();
        let mut t = self.t.lock();
        let mut joined = Vec::new();
        for c in &hb.consumer_data_set {
            if upsert(&mut t.consumers, &c.group_name, &hb.client_id, conn, now) {
                joined.push(c.group_name.clone());
            }
            if t.consumers.contains_key(&c.group_name) {
                let kind = GroupKind {
                    message_model: c.message_model,
                    consume_type: c.consume_type,
                };
                t.kinds.insert(c.group_name.clone(), kind);
            }
        }
        for p in &hb.producer_data_set {
            upsert(&mut t.producers, &p.group_name, &hb.client_id, conn, now);
        }
        if t.heartbeats.len() < MAX_GROUPS || t.heartbeats.contains_key(&hb.client_id) {
            t.heartbeats.insert(hb.client_id.clone(), (hb.clone(), now));
            t.sdks.insert(hb.client_id.clone(), sdk);
        }
        drop(t);
        if !joined.is_empty() {
            self.joined.notify_one();
        }
        joined
    }

    /// Resolves once a consumer group has gained a member since the last call.
    pub async fn member_joined(&self) {
        self.joined.notified().await;
    }

    /// UNREGISTER_CLIENT: removes the client from the named groups (and its heartbeat when it
    /// leaves every group).
    pub fn unregister(
        &self,
        client: &str,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) {
        let mut t = self.t.lock();
        if let Some(g) = consumer_group.filter(|g| !g.is_empty()) {
            remove_member(&mut t.consumers, g, client);
        }
        if let Some(g) = producer_group.filter(|g| !g.is_empty()) {
            remove_member(&mut t.producers, g, client);
        }
        let still = t
            .consumers
            .values()
            .chain(t.producers.values())
            .any(|m| m.contains_key(client));
        if !still {
            t.heartbeats.remove(client);
        }
        t.forget_left_groups();
    }

    /// The pull mode of `group` for a pull with (or without) the suspend flag.
    pub fn pull_mode(&self, group: &str, suspend: bool) -> PullMode {
        let t = self.t.lock();
        pull_mode(
            t.kinds.get(group).copied(),
            t.orderly.contains(group),
            suspend,
        )
    }

    /// Whether `group` locks queues (orderly consumers).
    pub fn is_orderly(&self, group: &str) -> bool {
        self.t.lock().orderly.contains(group)
    }

    /// A group locked queues: its consumers are orderly.
    pub fn mark_orderly(&self, group: &str) {
        let mut t = self.t.lock();
        if !t.orderly.contains(group) && t.orderly.len() < MAX_GROUPS {
            t.orderly.insert(group.to_owned());
        }
    }

    /// Whether a client on this connection is in a group whose pulls are relayed directly
    /// (offset requests without a group then ask the real broker).
    pub fn has_direct_consumer(&self, conn_id: u64) -> bool {
        let t = self.t.lock();
        t.consumers.iter().any(|(g, members)| {
            members.values().any(|m| m.conn.id() == conn_id)
                && matches!(
                    pull_mode(t.kinds.get(g).copied(), t.orderly.contains(g), true),
                    PullMode::Direct(_)
                )
        })
    }

    /// Every consumer group with what its heartbeat said and how its pulls are served, for
    /// `/config_dump`.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let t = self.t.lock();
        let mut out: Vec<serde_json::Value> = t
            .consumers
            .iter()
            .map(|(g, members)| {
                let kind = t.kinds.get(g).copied();
                let (mode, reason) = match pull_mode(kind, t.orderly.contains(g), true) {
                    PullMode::Pop => ("pop", None),
                    PullMode::Direct(r) => ("direct", Some(r.as_str())),
                };
                serde_json::json!({
                    "group": g,
                    "members": members.len(),
                    "message_model": kind.map(|k| format!("{:?}", k.message_model)),
                    "consume_type": kind.map(|k| format!("{:?}", k.consume_type)),
                    "pulls": mode,
                    "reason": reason,
                })
            })
            .collect();
        out.sort_by(|a, b| a["group"].as_str().cmp(&b["group"].as_str()));
        out
    }

    /// Live client ids of a consumer group, sorted.
    pub fn consumers(&self, group: &str) -> Vec<String> {
        let now = Instant::now();
        let t = self.t.lock();
        let mut out: Vec<String> = t
            .consumers
            .get(group)
            .map(|m| {
                m.iter()
                    .filter(|(_, m)| {
                        now.duration_since(m.last_seen) <= self.expiry && !m.conn.is_closed()
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The client id a connection registered in a consumer group (by heartbeat).
    pub fn client_of(&self, conn_id: u64, group: &str) -> Option<String> {
        let t = self.t.lock();
        t.consumers
            .get(group)?
            .iter()
            .find(|(_, m)| m.conn.id() == conn_id)
            .map(|(id, _)| id.clone())
    }

    /// Live downstream connections of a consumer group (one per client).
    pub fn consumer_connections(&self, group: &str) -> Vec<Arc<Connection>> {
        self.connections(|t| t.consumers.get(group))
    }

    /// Live downstream connections of a producer group.
    pub fn producer_connections(&self, group: &str) -> Vec<Arc<Connection>> {
        self.connections(|t| t.producers.get(group))
    }

    fn connections(
        &self,
        pick: impl Fn(&Tables) -> Option<&HashMap<String, Member>>,
    ) -> Vec<Arc<Connection>> {
        let t = self.t.lock();
        pick(&t)
            .map(|m| {
                m.values()
                    .filter(|m| !m.conn.is_closed())
                    .map(|m| m.conn.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A downstream connection closed: its clients leave every group. Returns the consumer
    /// groups that lost a member.
    pub fn connection_closed(&self, conn_id: u64) -> Vec<String> {
        let mut t = self.t.lock();
        let mut left = BTreeSet::new();
        for (g, members) in t.consumers.iter_mut() {
            let before = members.len();
            members.retain(|_, m| m.conn.id() != conn_id);
            if members.len() != before {
                left.insert(g.clone());
            }
        }
        for members in t.producers.values_mut() {
            members.retain(|_, m| m.conn.id() != conn_id);
        }
        t.consumers.retain(|_, m| !m.is_empty());
        t.producers.retain(|_, m| !m.is_empty());
        let Tables {
            consumers,
            producers,
            heartbeats,
            ..
        } = &mut *t;
        heartbeats.retain(|client, _| {
            consumers
                .values()
                .chain(producers.values())
                .any(|m| m.contains_key(client))
        });
        t.forget_left_groups();
        left.into_iter().collect()
    }

    /// Drops members not heard from within the expiry. Returns the consumer groups that changed.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let expiry = self.expiry;
        let mut t = self.t.lock();
        let mut changed = Vec::new();
        for (g, members) in t.consumers.iter_mut() {
            let before = members.len();
            members.retain(|_, m| now.duration_since(m.last_seen) <= expiry);
            if members.len() != before {
                changed.push(g.clone());
            }
        }
        for members in t.producers.values_mut() {
            members.retain(|_, m| now.duration_since(m.last_seen) <= expiry);
        }
        t.consumers.retain(|_, m| !m.is_empty());
        t.producers.retain(|_, m| !m.is_empty());
        t.heartbeats
            .retain(|_, (_, at)| now.duration_since(*at) <= expiry);
        t.forget_left_groups();
        changed
    }

    /// GET_CONSUMER_CONNECTION_LIST: the group's live local clients (id, address as the
    /// sidecar sees it, language, version) and what their latest heartbeats say of the group;
    /// None when no client of the group is connected here.
    pub fn consumer_connection(&self, group: &str) -> Option<ConsumerConnection> {
        let t = self.t.lock();
        let members = t.consumers.get(group)?;
        let mut out = ConsumerConnection::default();
        let mut newest: Option<Instant> = None;
        for (id, m) in members.iter().filter(|(_, m)| !m.conn.is_closed()) {
            let (language, version) = t.sdks.get(id).copied().unwrap_or(("OTHER", 0));
            out.connection_set.push(ClientConnection {
                client_addr: m.conn.peer().to_string(),
                client_id: id.clone(),
                language: language.to_owned(),
                version,
            });
            let Some((hb, at)) = t.heartbeats.get(id) else {
                continue;
            };
            let Some(data) = hb.consumer_data_set.iter().find(|c| c.group_name == group) else {
                continue;
            };
            // The group's settings come from the newest heartbeat; subscriptions are merged.
            if newest.is_none_or(|n| *at >= n) {
                newest = Some(*at);
                out.consume_type = data.consume_type;
                out.message_model = data.message_model;
                out.consume_from_where = data.consume_from_where;
            }
            for sub in &data.subscription_data_set {
                out.subscription_table
                    .entry(sub.topic.clone())
                    .or_insert_with(|| sub.clone());
            }
        }
        if out.connection_set.is_empty() {
            return None;
        }
        out.connection_set
            .sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Some(out)
    }

    /// The live downstream connection of `client` in consumer group `group`.
    pub fn consumer(&self, group: &str, client: &str) -> Option<Arc<Connection>> {
        let t = self.t.lock();
        let m = t.consumers.get(group)?.get(client)?;
        (!m.conn.is_closed()).then(|| m.conn.clone())
    }

    /// The topics a consumer group subscribes, by its clients' heartbeats (with its retry topic).
    pub fn subscribed_topics(&self, group: &str) -> BTreeSet<String> {
        let t = self.t.lock();
        let Some(members) = t.consumers.get(group) else {
            return BTreeSet::new();
        };
        members
            .keys()
            .filter_map(|id| t.heartbeats.get(id))
            .flat_map(|(hb, _)| hb.consumer_data_set.iter())
            .filter(|c| c.group_name == group)
            .flat_map(|c| c.subscription_data_set.iter().map(|s| s.topic.clone()))
            .collect()
    }

    /// The consumer groups with a member here.
    pub fn consumer_groups(&self) -> Vec<String> {
        self.t.lock().consumers.keys().cloned().collect()
    }

    /// The clients' latest heartbeats (to repeat towards brokers).
    pub fn heartbeats(&self) -> Vec<HeartbeatData> {
        self.t
            .lock()
            .heartbeats
            .values()
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// (consumer groups, producer groups, clients) for introspection.
    pub fn counts(&self) -> (usize, usize, usize) {
        let t = self.t.lock();
        (t.consumers.len(), t.producers.len(), t.heartbeats.len())
    }
}

fn remove_member(map: &mut HashMap<String, HashMap<String, Member>>, group: &str, client: &str) {
    if let Some(m) = map.get_mut(group) {
        m.remove(client);
        if m.is_empty() {
            map.remove(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_are_translated_only_for_clustered_push_consumers() {
        let kind = |message_model, consume_type| {
            Some(GroupKind {
                message_model,
                consume_type,
            })
        };
        use ConsumeType::*;
        use MessageModel::*;
        let push = kind(Clustering, ConsumePassively);
        assert_eq!(pull_mode(push, false, false), PullMode::Pop);
        assert_eq!(
            pull_mode(push, true, true),
            PullMode::Direct(DirectReason::Orderly)
        );
        assert_eq!(
            pull_mode(kind(Broadcasting, ConsumePassively), false, true),
            PullMode::Direct(DirectReason::Broadcasting)
        );
        assert_eq!(
            pull_mode(kind(Clustering, ConsumeActively), false, true),
            PullMode::Direct(DirectReason::PullConsumer)
        );
        assert_eq!(pull_mode(None, false, true), PullMode::Pop);
        assert_eq!(
            pull_mode(None, false, false),
            PullMode::Direct(DirectReason::NoSuspend)
        );
    }
}
