//! Connected producers and consumers, by group, from HEART_BEAT / UNREGISTER_CLIENT and
//! connection lifetimes.
//!
//! Every membership change of a consumer group is reported to the caller, which sends
//! NOTIFY_CONSUMER_IDS_CHANGED to the group's members so they rebalance at once. Members that stop
//! sending heartbeats are expired (Java brokers use 120 s).
//!
//! Subscriptions keep the tag hashes computed here from the tag names: the C++ client sends
//! `codeSet` as zeros, so trusting it would filter everything out.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::body::{
    java_string_hash, ConsumeFromWhere, ConsumeType, ConsumerConnection, HeartbeatData,
    MessageModel, SubscriptionData,
};
use rocketmesh_filters::codec::codes::LanguageCode;
use rocketmesh_filters::codec::RemotingCommand;

use rocketmesh_remoting::Connection;

/// Members silent for longer than this are dropped.
pub const CLIENT_EXPIRY: Duration = Duration::from_secs(120);
/// Most groups tracked (bounded memory against clients inventing group names).
pub const MAX_GROUPS: usize = 100_000;
/// Most members per group.
pub const MAX_MEMBERS_PER_GROUP: usize = 10_000;

/// Who sent a heartbeat: the command's `language` and `version` (shown by
/// GET_CONSUMER_CONNECTION_LIST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientMeta {
    /// The client's language.
    pub language: LanguageCode,
    /// The client's version ordinal.
    pub version: i32,
}

impl ClientMeta {
    /// The sender of `cmd`.
    pub fn of(cmd: &RemotingCommand) -> Self {
        Self {
            language: cmd.language(),
            version: cmd.version(),
        }
    }
}

/// One member of a group.
#[derive(Debug, Clone)]
struct Member {
    conn: Arc<Connection>,
    last_seen: Instant,
    meta: ClientMeta,
}

#[derive(Debug, Default)]
struct ConsumerGroup {
    members: BTreeMap<String, Member>,
    subscriptions: HashMap<String, SubscriptionData>,
    consume_type: Option<ConsumeType>,
    message_model: Option<MessageModel>,
    consume_from_where: Option<ConsumeFromWhere>,
}

#[derive(Debug, Default)]
struct Inner {
    consumers: HashMap<String, ConsumerGroup>,
    producers: HashMap<String, BTreeMap<String, Member>>,
}

/// The client table.
#[derive(Debug, Default)]
pub struct ClientTable {
    inner: Mutex<Inner>,
}

/// A consumer group as the broker sees it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Group name.
    pub group: String,
    /// Member client ids, sorted.
    pub client_ids: Vec<String>,
    /// Push or pull (or pop).
    pub consume_type: Option<ConsumeType>,
    /// Clustering or broadcasting.
    pub message_model: Option<MessageModel>,
    /// Where a new member starts.
    pub consume_from_where: Option<ConsumeFromWhere>,
}

impl ClientTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a heartbeat; returns the consumer groups whose membership changed.
    pub fn heartbeat(
        &self,
        conn: &Arc<Connection>,
        hb: &HeartbeatData,
        meta: ClientMeta,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let mut changed = Vec::new();
        for p in &hb.producer_data_set {
            if !inner.producers.contains_key(&p.group_name) && inner.producers.len() >= MAX_GROUPS {
                continue;
            }
            let members = inner.producers.entry(p.group_name.clone()).or_default();
            if members.len() < MAX_MEMBERS_PER_GROUP || members.contains_key(&hb.client_id) {
                members.insert(
                    hb.client_id.clone(),
                    Member {
                        conn: conn.clone(),
                        last_seen: now,
                        meta,
                    },
                );
            }
        }
        for c in &hb.consumer_data_set {
            if !inner.consumers.contains_key(&c.group_name) && inner.consumers.len() >= MAX_GROUPS {
                continue;
            }
            let group = inner.consumers.entry(c.group_name.clone()).or_default();
            group.consume_type = Some(c.consume_type);
            group.message_model = Some(c.message_model);
            group.consume_from_where = Some(c.consume_from_where);
            for sub in &c.subscription_data_set {
                let mut sub = sub.clone();
                sub.code_set = sub.tags_set.iter().map(|t| java_string_hash(t)).collect();
                group.subscriptions.insert(sub.topic.clone(), sub);
            }
            let member = Member {
                conn: conn.clone(),
                last_seen: now,
                meta,
            };
            let room = group.members.len() < MAX_MEMBERS_PER_GROUP;
            match group.members.get_mut(&hb.client_id) {
                Some(existing) => {
                    if existing.conn.id() != conn.id() {
                        changed.push(c.group_name.clone());
                    }
                    *existing = member;
                }
                None if room => {
                    group.members.insert(hb.client_id.clone(), member);
                    changed.push(c.group_name.clone());
                }
                None => {}
            }
        }
        changed
    }

    /// UNREGISTER_CLIENT; returns whether the consumer group changed.
    pub fn unregister(
        &self,
        client_id: &str,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) -> bool {
        let mut inner = self.inner.lock();
        if let Some(g) = producer_group.filter(|g| !g.is_empty()) {
            if let Some(members) = inner.producers.get_mut(g) {
                members.remove(client_id);
                if members.is_empty() {
                    inner.producers.remove(g);
                }
            }
        }
        let Some(g) = consumer_group.filter(|g| !g.is_empty()) else {
            return false;
        };
        let Some(group) = inner.consumers.get_mut(g) else {
            return false;
        };
        let removed = group.members.remove(client_id).is_some();
        if group.members.is_empty() {
            inner.consumers.remove(g);
        }
        removed
    }

    /// A connection closed: drop its memberships; returns the consumer groups that changed.
    pub fn connection_closed(&self, conn_id: u64) -> Vec<String> {
        self.remove_where(|m| m.conn.id() == conn_id)
    }

    /// Drops members silent for longer than `expiry`; returns the consumer groups that changed.
    pub fn expire(&self, expiry: Duration) -> Vec<String> {
        let now = Instant::now();
        self.remove_where(|m| now.duration_since(m.last_seen) > expiry || m.conn.is_closed())
    }

    fn remove_where(&self, dead: impl Fn(&Member) -> bool) -> Vec<String> {
        let mut inner = self.inner.lock();
        let mut changed = Vec::new();
        inner.consumers.retain(|name, group| {
            let before = group.members.len();
            group.members.retain(|_, m| !dead(m));
            if group.members.len() != before {
                changed.push(name.clone());
            }
            !group.members.is_empty()
        });
        inner.producers.retain(|_, members| {
            members.retain(|_, m| !dead(m));
            !members.is_empty()
        });
        changed
    }

    /// The group's member client ids, sorted (GET_CONSUMER_LIST_BY_GROUP).
    pub fn consumer_ids(&self, group: &str) -> Vec<String> {
        self.inner
            .lock()
            .consumers
            .get(group)
            .map(|g| g.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Connections of the group's members (for NOTIFY_CONSUMER_IDS_CHANGED).
    pub fn consumer_connections(&self, group: &str) -> Vec<Arc<Connection>> {
        self.inner
            .lock()
            .consumers
            .get(group)
            .map(|g| g.members.values().map(|m| m.conn.clone()).collect())
            .unwrap_or_default()
    }

    /// The subscription the group registered for `topic`.
    pub fn subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.inner
            .lock()
            .consumers
            .get(group)
            .and_then(|g| g.subscriptions.get(topic).cloned())
    }

    /// A summary of a consumer group.
    pub fn group(&self, group: &str) -> Option<GroupInfo> {
        self.inner.lock().consumers.get(group).map(|g| GroupInfo {
            group: group.to_owned(),
            client_ids: g.members.keys().cloned().collect(),
            consume_type: g.consume_type,
            message_model: g.message_model,
            consume_from_where: g.consume_from_where,
        })
    }

    /// Every consumer group name.
    pub fn consumer_groups(&self) -> Vec<String> {
        let mut v: Vec<_> = self.inner.lock().consumers.keys().cloned().collect();
        v.sort();
        v
    }

    /// GET_CONSUMER_CONNECTION_LIST: the group's members and settings; `None` when the group
    /// has no member.
    pub fn consumer_connection(&self, group: &str) -> Option<ConsumerConnection> {
        let inner = self.inner.lock();
        let g = inner
            .consumers
            .get(group)
            .filter(|g| !g.members.is_empty())?;
        Some(ConsumerConnection {
            connection_set: g
                .members
                .iter()
                .map(|(id, m)| rocketmesh_filters::codec::body::Connection {
                    client_addr: m.conn.peer().to_string(),
                    client_id: id.clone(),
                    language: m.meta.language.name().to_owned(),
                    version: m.meta.version,
                })
                .collect(),
            consume_from_where: g.consume_from_where.unwrap_or_default(),
            consume_type: g.consume_type.unwrap_or_default(),
            message_model: g.message_model.unwrap_or_default(),
            subscription_table: g
                .subscriptions
                .iter()
                .map(|(t, s)| (t.clone(), s.clone()))
                .collect(),
        })
    }

    /// The connection of member `client_id` of `group` (the broker's calls to a consumer).
    pub fn consumer_member(&self, group: &str, client_id: &str) -> Option<Arc<Connection>> {
        self.inner
            .lock()
            .consumers
            .get(group)
            .and_then(|g| g.members.get(client_id))
            .map(|m| m.conn.clone())
    }

    /// Topics the group subscribes to, sorted (empty for an unknown group).
    /// Groups whose consumers subscribe to `topic`, sorted.
    pub fn groups_subscribing(&self, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .lock()
            .consumers
            .iter()
            .filter(|(_, g)| g.subscriptions.contains_key(topic))
            .map(|(name, _)| name.clone())
            .collect();
        v.sort();
        v
    }

    pub fn subscribed_topics(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .lock()
            .consumers
            .get(group)
            .map(|g| g.subscriptions.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}
