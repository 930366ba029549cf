//! The registry behind the nameserver: brokers by address, groups by name, and each topic's
//! share per group, with the diff that says which topics a registration changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use rocketmesh_filters::codec::body::{
    BrokerData, ClusterInfo, DataVersion, QueueData, TopicRouteData,
};
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};

/// A topic's queues on one broker, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueConf {
    pub(super) perm: i32,
    pub(super) read: i32,
    pub(super) write: i32,
    pub(super) sys_flag: i32,
}

#[derive(Debug)]
pub(super) struct BrokerEntry {
    pub(super) broker_name: String,
    pub(super) broker_id: u64,
    pub(super) cluster: String,
    pub(super) ha_addr: String,
    pub(super) topics: HashMap<String, QueueConf>,
    pub(super) data_version: DataVersion,
    pub(super) last_update: Instant,
    pub(super) conn_id: u64,
}

/// Brokers sharing a name: id -> address.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) cluster: String,
    pub(super) members: BTreeMap<u64, String>,
}

/// What a REGISTER_BROKER carries, decoded.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) addr: String,
    pub(super) broker_name: String,
    pub(super) broker_id: u64,
    pub(super) cluster: String,
    pub(super) ha_addr: String,
    pub(super) topics: HashMap<String, QueueConf>,
    pub(super) data_version: DataVersion,
    pub(super) conn_id: u64,
}

/// The broker registry. Every mutation returns the topics whose routes may have changed.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) brokers: HashMap<String, BrokerEntry>,
    pub(super) groups: HashMap<String, Group>,
    /// topic -> broker name -> how many members of that group have the topic.
    pub(super) topic_index: HashMap<String, BTreeMap<String, u32>>,
}

/// One group's share of a topic.
pub(super) struct Share<'a> {
    pub(super) name: &'a str,
    pub(super) group: &'a Group,
    pub(super) conf: QueueConf,
}

impl Registry {
    pub(super) fn index_add(&mut self, topic: &str, name: &str) {
        *self
            .topic_index
            .entry(topic.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert(0) += 1;
    }

    pub(super) fn index_remove(&mut self, topic: &str, name: &str) {
        let Some(groups) = self.topic_index.get_mut(topic) else {
            return;
        };
        if let Some(n) = groups.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                groups.remove(name);
            }
        }
        if groups.is_empty() {
            self.topic_index.remove(topic);
        }
    }

    /// Every topic some member of group `name` has.
    pub(super) fn group_topics(&self, name: &str, out: &mut HashSet<String>) {
        if let Some(g) = self.groups.get(name) {
            for addr in g.members.values() {
                if let Some(e) = self.brokers.get(addr) {
                    out.extend(e.topics.keys().cloned());
                }
            }
        }
    }

    /// Removes the broker at `addr`; returns the topics whose routes changed.
    pub(super) fn remove(&mut self, addr: &str) -> HashSet<String> {
        let mut affected = HashSet::new();
        let Some(entry) = self.brokers.remove(addr) else {
            return affected;
        };
        affected.extend(entry.topics.keys().cloned());
        for t in entry.topics.keys() {
            self.index_remove(t, &entry.broker_name);
        }
        if let Some(g) = self.groups.get_mut(&entry.broker_name) {
            if g.members.get(&entry.broker_id).map(String::as_str) == Some(addr) {
                g.members.remove(&entry.broker_id);
            }
            if g.members.is_empty() {
                self.groups.remove(&entry.broker_name);
            }
        }
        // The remaining members' routes lost an address.
        self.group_topics(&entry.broker_name, &mut affected);
        affected
    }

    /// Applies a registration; returns the topics whose routes changed.
    pub(super) fn register(
        &mut self,
        reg: Registration,
        now: Instant,
        max_brokers: usize,
    ) -> Result<HashSet<String>, String> {
        let mut affected = HashSet::new();
        // Another address registered under the same name and id: that broker was replaced.
        let displaced = self
            .groups
            .get(&reg.broker_name)
            .and_then(|g| g.members.get(&reg.broker_id))
            .filter(|a| **a != reg.addr)
            .cloned();
        if let Some(other) = displaced {
            affected.extend(self.remove(&other));
        }
        // The same address under another name or id (e.g. a slave promoted to master).
        if self
            .brokers
            .get(&reg.addr)
            .is_some_and(|e| e.broker_name != reg.broker_name || e.broker_id != reg.broker_id)
        {
            affected.extend(self.remove(&reg.addr));
        }
        if !self.brokers.contains_key(&reg.addr) && self.brokers.len() >= max_brokers {
            return Err(format!(
                "the nameserver holds {max_brokers} brokers, its limit"
            ));
        }

        let cluster_changed = self
            .groups
            .get(&reg.broker_name)
            .is_some_and(|g| g.cluster != reg.cluster);
        match self.brokers.get_mut(&reg.addr) {
            Some(e) => {
                e.last_update = now;
                e.conn_id = reg.conn_id;
                e.data_version = reg.data_version;
                e.ha_addr = reg.ha_addr;
                e.cluster = reg.cluster.clone();
                if e.topics != reg.topics {
                    let old = std::mem::replace(&mut e.topics, reg.topics);
                    let name = e.broker_name.clone();
                    let new_keys: Vec<(String, bool)> = self.brokers[&reg.addr]
                        .topics
                        .iter()
                        .map(|(t, c)| (t.clone(), old.get(t) != Some(c)))
                        .collect();
                    for (t, changed) in new_keys {
                        if !old.contains_key(&t) {
                            self.index_add(&t, &name);
                        }
                        if changed {
                            affected.insert(t);
                        }
                    }
                    let current = &self.brokers[&reg.addr].topics;
                    let gone: Vec<String> = old
                        .into_keys()
                        .filter(|t| !current.contains_key(t))
                        .collect();
                    for t in gone {
                        self.index_remove(&t, &name);
                        affected.insert(t);
                    }
                }
            }
            None => {
                tracing::info!(
                    addr = %reg.addr, name = %reg.broker_name, id = reg.broker_id,
                    cluster = %reg.cluster, topics = reg.topics.len(), "broker registered"
                );
                for t in reg.topics.keys() {
                    self.index_add(t, &reg.broker_name);
                }
                let group = self.groups.entry(reg.broker_name.clone()).or_default();
                group.members.insert(reg.broker_id, reg.addr.clone());
                if group.cluster.is_empty() {
                    group.cluster = reg.cluster.clone();
                }
                self.brokers.insert(
                    reg.addr,
                    BrokerEntry {
                        broker_name: reg.broker_name.clone(),
                        broker_id: reg.broker_id,
                        cluster: reg.cluster.clone(),
                        ha_addr: reg.ha_addr,
                        topics: reg.topics,
                        data_version: reg.data_version,
                        last_update: now,
                        conn_id: reg.conn_id,
                    },
                );
                // Every route of the group gained an address.
                self.group_topics(&reg.broker_name, &mut affected);
            }
        }
        if cluster_changed {
            if let Some(g) = self.groups.get_mut(&reg.broker_name) {
                g.cluster = reg.cluster;
            }
            self.group_topics(&reg.broker_name, &mut affected);
        }
        Ok(affected)
    }

    /// The groups serving `topic`, sorted by broker name.
    pub(super) fn shares(&self, topic: &str) -> Vec<Share<'_>> {
        let Some(names) = self.topic_index.get(topic) else {
            return Vec::new();
        };
        let conf_at = |addr: &String| self.brokers.get(addr)?.topics.get(topic).copied();
        names
            .keys()
            .filter_map(|name| {
                let group = self.groups.get(name)?;
                let conf = match group.members.get(&0) {
                    Some(master) => conf_at(master)?,
                    None => group.members.values().find_map(conf_at)?,
                };
                Some(Share { name, group, conf })
            })
            .collect()
    }

    pub(super) fn route_spec(&self, topic: &str) -> Option<TopicRouteSpec> {
        let brokers: Vec<BrokerQueues> = self
            .shares(topic)
            .into_iter()
            .map(|s| BrokerQueues {
                broker_name: s.name.to_owned(),
                cluster_name: s.group.cluster.clone(),
                addrs: s.group.members.clone(),
                perm: nonneg(s.conf.perm),
                read_queue_num: nonneg(s.conf.read),
                write_queue_num: nonneg(s.conf.write),
            })
            .collect();
        (!brokers.is_empty()).then(|| TopicRouteSpec {
            topic: topic.to_owned(),
            brokers,
        })
    }

    pub(super) fn route_data(&self, topic: &str) -> Option<TopicRouteData> {
        let shares = self.shares(topic);
        if shares.is_empty() {
            return None;
        }
        let mut route = TopicRouteData::default();
        for s in shares {
            route.queue_datas.push(QueueData {
                broker_name: s.name.to_owned(),
                perm: s.conf.perm,
                read_queue_nums: s.conf.read,
                write_queue_nums: s.conf.write,
                topic_sys_flag: s.conf.sys_flag,
            });
            route.broker_datas.push(broker_data(s.name, s.group));
        }
        Some(route)
    }

    pub(super) fn cluster_info(&self) -> ClusterInfo {
        let mut info = ClusterInfo::default();
        for (name, g) in &self.groups {
            info.broker_addr_table
                .insert(name.clone(), broker_data(name, g));
            info.cluster_addr_table
                .entry(g.cluster.clone())
                .or_default()
                .insert(name.clone());
        }
        info
    }

    /// (master address, master HA address) for a slave's registration answer.
    pub(super) fn master_of(&self, broker_name: &str, broker_id: u64) -> Option<(String, String)> {
        if broker_id == 0 {
            return None;
        }
        let master = self.groups.get(broker_name)?.members.get(&0)?;
        let entry = self.brokers.get(master)?;
        Some((master.clone(), entry.ha_addr.clone()))
    }
}

pub(super) fn nonneg(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(super) fn broker_data(name: &str, g: &Group) -> BrokerData {
    BrokerData {
        broker_addrs: g
            .members
            .iter()
            .filter_map(|(&id, addr)| Some((i64::try_from(id).ok()?, addr.clone())))
            .collect(),
        broker_name: name.to_owned(),
        cluster: g.cluster.clone(),
        ..BrokerData::default()
    }
}
