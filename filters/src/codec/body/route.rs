//! Route bodies: `TopicRouteData` (GET_ROUTEINFO_BY_TOPIC, protocol notes 4.14) and
//! `ClusterInfo` (GET_BROKER_CLUSTER_INFO, 4.15).
//!
//! Both contain `BrokerData.brokerAddrs`, a `Map<Long, String>` that fastjson writes with
//! unquoted keys (`{0:"10.0.0.1:10911"}`) unless the name server was asked for standard JSON.
//! Parsing accepts both forms; writing picks one with [`RouteJsonStyle`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::serde_util::null_default;
use super::{decode_json, encode_json, BodyError};
use crate::codec::codes::VERSION_4_9_4;

/// Permission bits of a topic / queue (`PermName`).
pub mod perm {
    /// The topic is a priority topic.
    pub const PERM_PRIORITY: i32 = 1 << 3;
    /// Consumers may read.
    pub const PERM_READ: i32 = 1 << 2;
    /// Producers may write.
    pub const PERM_WRITE: i32 = 1 << 1;
    /// Inherit permissions (used when auto-creating topics from `TBW102`).
    pub const PERM_INHERIT: i32 = 1;

    /// Whether `perm` has [`PERM_READ`].
    pub const fn is_readable(perm: i32) -> bool {
        perm & PERM_READ == PERM_READ
    }

    /// Whether `perm` has [`PERM_WRITE`].
    pub const fn is_writable(perm: i32) -> bool {
        perm & PERM_WRITE == PERM_WRITE
    }

    /// Whether `perm` has [`PERM_INHERIT`].
    pub const fn is_inherited(perm: i32) -> bool {
        perm & PERM_INHERIT == PERM_INHERIT
    }

    /// Whether `perm` has [`PERM_PRIORITY`].
    pub const fn is_priority(perm: i32) -> bool {
        perm & PERM_PRIORITY == PERM_PRIORITY
    }

    /// Java's `PermName.perm2String`: `R`, `W`, `X` (inherit) or `-` for each, e.g. `"RW-"`.
    pub fn to_string(perm: i32) -> String {
        let mut s = String::with_capacity(3);
        s.push(if is_readable(perm) { 'R' } else { '-' });
        s.push(if is_writable(perm) { 'W' } else { '-' });
        s.push(if is_inherited(perm) { 'X' } else { '-' });
        s
    }
}

/// Bits of `topicSysFlag` (`TopicSysFlag`).
pub mod topic_sys_flag {
    /// The topic is a unit topic.
    pub const FLAG_UNIT: i32 = 1;
    /// The topic has unit subscriptions.
    pub const FLAG_UNIT_SUB: i32 = 1 << 1;
}

/// Which JSON flavour to write route data in (`brokerAddrs` keys quoted or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteJsonStyle {
    /// Standard JSON: `{"0":"addr"}`. What a namesrv >= 4.9.4 answers modern clients.
    Standard,
    /// fastjson's legacy form with bare integer keys: `{0:"addr"}`. What older clients (and the
    /// Go client, which cuts the text by hand) get.
    Legacy,
}

impl RouteJsonStyle {
    /// The style a name server uses for a request: standard when the request `version` is at
    /// least [`VERSION_4_9_4`] (401) or it sets `acceptStandardJsonOnly=true`, legacy otherwise.
    pub fn for_request(version: i32, accept_standard_json_only: bool) -> Self {
        if version >= VERSION_4_9_4 || accept_standard_json_only {
            Self::Standard
        } else {
            Self::Legacy
        }
    }

    /// Whether this is [`RouteJsonStyle::Standard`].
    pub fn is_standard(self) -> bool {
        self == Self::Standard
    }
}

/// Queues of a topic on one broker (`QueueData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    /// The broker holding the queues.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_name: String,
    /// Permission bits, see [`perm`].
    #[serde(default, deserialize_with = "null_default")]
    pub perm: i32,
    /// Number of readable queues.
    #[serde(default, deserialize_with = "null_default")]
    pub read_queue_nums: i32,
    /// Topic system flags, see [`topic_sys_flag`].
    #[serde(default, deserialize_with = "null_default")]
    pub topic_sys_flag: i32,
    /// Number of writable queues.
    #[serde(default, deserialize_with = "null_default")]
    pub write_queue_nums: i32,
}

impl QueueData {
    /// Whether the queues may be read ([`perm::PERM_READ`]).
    pub fn is_readable(&self) -> bool {
        perm::is_readable(self.perm)
    }

    /// Whether the queues may be written ([`perm::PERM_WRITE`]).
    pub fn is_writable(&self) -> bool {
        perm::is_writable(self.perm)
    }
}

/// The addresses of one broker group (`BrokerData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    /// Broker id → `"ip:port"`; id 0 ([`BrokerData::MASTER_ID`]) is the master.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_addrs: BTreeMap<i64, String>,
    /// The broker group name.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_name: String,
    /// The cluster name.
    #[serde(default, deserialize_with = "null_default")]
    pub cluster: String,
    /// 5.x: a slave may act as master while the master is down.
    #[serde(default, deserialize_with = "null_default")]
    pub enable_acting_master: bool,
    /// 5.x: the zone of the broker; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_name: Option<String>,
}

impl BrokerData {
    /// `MixAll.MASTER_ID`: the broker id of the master.
    pub const MASTER_ID: i64 = 0;

    /// The master's address, if the group has one.
    pub fn master_addr(&self) -> Option<&str> {
        self.broker_addrs.get(&Self::MASTER_ID).map(String::as_str)
    }

    /// Appends this broker as a fastjson object in `style` (the only difference between the
    /// styles is how the `brokerAddrs` keys are written).
    fn write_json(&self, out: &mut Vec<u8>, style: RouteJsonStyle) {
        out.extend_from_slice(b"{\"brokerAddrs\":{");
        for (i, (id, addr)) in self.broker_addrs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match style {
                RouteJsonStyle::Standard => {
                    out.push(b'"');
                    out.extend_from_slice(id.to_string().as_bytes());
                    out.push(b'"');
                }
                RouteJsonStyle::Legacy => out.extend_from_slice(id.to_string().as_bytes()),
            }
            out.push(b':');
            out.extend_from_slice(&encode_json(addr));
        }
        out.extend_from_slice(b"},\"brokerName\":");
        out.extend_from_slice(&encode_json(&self.broker_name));
        out.extend_from_slice(b",\"cluster\":");
        out.extend_from_slice(&encode_json(&self.cluster));
        out.extend_from_slice(b",\"enableActingMaster\":");
        out.extend_from_slice(if self.enable_acting_master {
            b"true"
        } else {
            b"false"
        });
        if let Some(zone) = &self.zone_name {
            out.extend_from_slice(b",\"zoneName\":");
            out.extend_from_slice(&encode_json(zone));
        }
        out.push(b'}');
    }
}

/// The route of a topic (`TopicRouteData`): its queues per broker and the brokers' addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    /// The brokers holding the topic.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_datas: Vec<BrokerData>,
    /// Broker address → filter server addresses (legacy class filters; normally empty).
    #[serde(default, deserialize_with = "null_default")]
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    /// For order topics, `"brokerName:writeQueueNums;..."`; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_topic_conf: Option<String>,
    /// The topic's queues per broker.
    #[serde(default, deserialize_with = "null_default")]
    pub queue_datas: Vec<QueueData>,
    /// 5.x static topics: broker name → `TopicQueueMappingInfo`, kept as raw JSON so that a
    /// rewritten route does not lose it; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_queue_mapping_by_broker: Option<BTreeMap<String, serde_json::Value>>,
}

impl TopicRouteData {
    /// Parses a route body in either form: standard JSON or fastjson's legacy unquoted
    /// `brokerAddrs` keys. Explicit `null`s (rocketmq-rust) and unknown keys are accepted.
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        decode_json("TopicRouteData", body)
    }

    /// Writes the body as a name server does: `standard` → quoted `brokerAddrs` keys,
    /// otherwise fastjson's legacy bare integer keys. Keys in fastjson's alphabetical order;
    /// `orderTopicConf` and `zoneName` omitted when absent.
    pub fn to_json(&self, standard: bool) -> Vec<u8> {
        self.encode(if standard {
            RouteJsonStyle::Standard
        } else {
            RouteJsonStyle::Legacy
        })
    }

    /// Writes the body in `style` (see [`TopicRouteData::to_json`]).
    pub fn encode(&self, style: RouteJsonStyle) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"brokerDatas\":[");
        for (i, broker) in self.broker_datas.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            broker.write_json(&mut out, style);
        }
        out.extend_from_slice(b"],\"filterServerTable\":");
        out.extend_from_slice(&encode_json(&self.filter_server_table));
        if let Some(conf) = &self.order_topic_conf {
            out.extend_from_slice(b",\"orderTopicConf\":");
            out.extend_from_slice(&encode_json(conf));
        }
        out.extend_from_slice(b",\"queueDatas\":");
        out.extend_from_slice(&encode_json(&self.queue_datas));
        if let Some(mapping) = &self.topic_queue_mapping_by_broker {
            out.extend_from_slice(b",\"topicQueueMappingByBroker\":");
            out.extend_from_slice(&encode_json(mapping));
        }
        out.push(b'}');
        out
    }

    /// The broker group named `broker_name`, if the route has it.
    pub fn broker(&self, broker_name: &str) -> Option<&BrokerData> {
        self.broker_datas
            .iter()
            .find(|b| b.broker_name == broker_name)
    }
}

/// The brokers of all clusters (`ClusterInfo`, GET_BROKER_CLUSTER_INFO response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// Broker name → its addresses.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// Cluster name → broker names.
    #[serde(default, deserialize_with = "null_default")]
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

impl ClusterInfo {
    /// Parses the body in either form (standard or legacy `brokerAddrs` keys).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        decode_json("ClusterInfo", body)
    }

    /// Writes the body with quoted (`standard`) or bare integer `brokerAddrs` keys.
    pub fn to_json(&self, standard: bool) -> Vec<u8> {
        let style = if standard {
            RouteJsonStyle::Standard
        } else {
            RouteJsonStyle::Legacy
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"brokerAddrTable\":{");
        for (i, (name, broker)) in self.broker_addr_table.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&encode_json(name));
            out.push(b':');
            broker.write_json(&mut out, style);
        }
        out.extend_from_slice(b"},\"clusterAddrTable\":");
        out.extend_from_slice(&encode_json(&self.cluster_addr_table));
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST_ROUTE: &str = "{\"orderTopicConf\":null,\"queueDatas\":[{\"brokerName\":\"broker-a\",\"readQueueNums\":4,\"writeQueueNums\":4,\"perm\":6,\"topicSysFlag\":0}],\"brokerDatas\":[{\"cluster\":\"DefaultCluster\",\"brokerName\":\"broker-a\",\"brokerAddrs\":{\"0\":\"127.0.0.2:10911\"},\"zoneName\":null,\"enableActingMaster\":false}],\"filterServerTable\":{},\"topicQueueMappingInfo\":null}";
    const RUST_ROUTE_TBW102: &str = "{\"orderTopicConf\":null,\"queueDatas\":[{\"brokerName\":\"broker-a\",\"readQueueNums\":8,\"writeQueueNums\":8,\"perm\":7,\"topicSysFlag\":0}],\"brokerDatas\":[{\"cluster\":\"DefaultCluster\",\"brokerName\":\"broker-a\",\"brokerAddrs\":{\"0\":\"127.0.0.2:10911\"},\"zoneName\":null,\"enableActingMaster\":false}],\"filterServerTable\":{},\"topicQueueMappingInfo\":null}";
    const RUST_REGISTER_TOPIC: &str = "{\"orderTopicConf\":null,\"queueDatas\":[{\"brokerName\":\"broker-a\",\"readQueueNums\":4,\"writeQueueNums\":4,\"perm\":6,\"topicSysFlag\":0}],\"brokerDatas\":[],\"filterServerTable\":{},\"topicQueueMappingInfo\":null}";
    const LEGACY: &str = r#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#;

    #[test]
    fn rocketmq_rust_responses() {
        let r = TopicRouteData::parse(RUST_ROUTE.as_bytes()).unwrap();
        assert_eq!(r.order_topic_conf, None);
        assert_eq!(r.queue_datas.len(), 1);
        let q = &r.queue_datas[0];
        assert_eq!(
            (
                q.broker_name.as_str(),
                q.read_queue_nums,
                q.write_queue_nums,
                q.perm
            ),
            ("broker-a", 4, 4, 6)
        );
        assert!(q.is_readable() && q.is_writable());
        let b = &r.broker_datas[0];
        assert_eq!(b.cluster, "DefaultCluster");
        assert_eq!(b.broker_name, "broker-a");
        assert_eq!(b.master_addr(), Some("127.0.0.2:10911"));
        assert_eq!(b.zone_name, None);
        assert!(!b.enable_acting_master);
        assert!(r.filter_server_table.is_empty());
        assert_eq!(r.broker("broker-a"), Some(b));

        let t = TopicRouteData::parse(RUST_ROUTE_TBW102.as_bytes()).unwrap();
        assert_eq!(t.queue_datas[0].perm, 7);
        assert!(perm::is_inherited(t.queue_datas[0].perm));
        assert_eq!(t.queue_datas[0].read_queue_nums, 8);

        let reg = TopicRouteData::parse(RUST_REGISTER_TOPIC.as_bytes()).unwrap();
        assert!(reg.broker_datas.is_empty());
        assert_eq!(reg.queue_datas.len(), 1);
    }

    #[test]
    fn legacy_unquoted_keys() {
        let r = TopicRouteData::parse(LEGACY.as_bytes()).unwrap();
        let b = &r.broker_datas[0];
        assert_eq!(b.broker_addrs.len(), 2);
        assert_eq!(b.broker_addrs[&0], "10.0.0.1:10911");
        assert_eq!(b.broker_addrs[&1], "10.0.0.2:10911");
        assert!(!b.enable_acting_master);
        assert_eq!(r.queue_datas[0].write_queue_nums, 4);
    }

    #[test]
    fn round_trip_both_styles() {
        let mut r = TopicRouteData::parse(LEGACY.as_bytes()).unwrap();
        let legacy = String::from_utf8(r.to_json(false)).unwrap();
        assert_eq!(
            legacy,
            r#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#
        );
        assert!(legacy.contains(r#"{0:""#));
        let standard = String::from_utf8(r.to_json(true)).unwrap();
        assert!(standard.contains(r#"{"0":"10.0.0.1:10911","1":"10.0.0.2:10911"}"#));
        assert!(serde_json::from_str::<serde_json::Value>(&standard).is_ok());
        // Standard output equals serde's derived form, and both styles parse back.
        assert_eq!(standard.as_bytes(), encode_json(&r));
        assert_eq!(TopicRouteData::parse(legacy.as_bytes()).unwrap(), r);
        assert_eq!(TopicRouteData::parse(standard.as_bytes()).unwrap(), r);

        // Optional fields, strings needing escapes, negative ids, and values that look like keys.
        r.order_topic_conf = Some("broker-a:4;x{1:y,2:z}".into());
        r.broker_datas[0].zone_name = Some("zone \"1\"".into());
        r.broker_datas[0]
            .broker_addrs
            .insert(-1, "a{1:\"b\",2:c".into());
        r.filter_server_table
            .insert("{3:x".into(), vec![",4:\"y\"".into()]);
        r.topic_queue_mapping_by_broker = Some(BTreeMap::from([(
            "broker-a".to_owned(),
            serde_json::json!({"bname":"broker-a","epoch":3}),
        )]));
        for standard in [false, true] {
            let out = r.to_json(standard);
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(text.contains(r#""orderTopicConf":"broker-a:4;x{1:y,2:z}""#));
            assert!(
                text.contains(if standard {
                    r#""-1":"a{1:\"b\",2:c""#
                } else {
                    r#"{-1:"a{1:\"b\",2:c""#
                }),
                "{text}"
            );
            assert_eq!(TopicRouteData::parse(&out).unwrap(), r);
        }
        // The pre-pass leaves string values alone even when they contain `{1:` or `,2:`.
        let standard = r.to_json(true);
        assert!(matches!(
            super::super::quote_bare_integer_keys(&standard),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn style_by_request_version() {
        assert_eq!(
            RouteJsonStyle::for_request(63, false),
            RouteJsonStyle::Legacy
        );
        assert_eq!(
            RouteJsonStyle::for_request(400, false),
            RouteJsonStyle::Legacy
        );
        assert_eq!(
            RouteJsonStyle::for_request(401, false),
            RouteJsonStyle::Standard
        );
        assert_eq!(
            RouteJsonStyle::for_request(474, false),
            RouteJsonStyle::Standard
        );
        assert_eq!(
            RouteJsonStyle::for_request(63, true),
            RouteJsonStyle::Standard
        );
        assert!(RouteJsonStyle::for_request(401, false).is_standard());
    }

    #[test]
    fn perm_helpers() {
        assert_eq!(perm::to_string(6), "RW-");
        assert_eq!(perm::to_string(7), "RWX");
        assert_eq!(perm::to_string(perm::PERM_PRIORITY), "---");
        assert!(perm::is_priority(8 | 6));
        assert!(!perm::is_writable(perm::PERM_READ));
        assert!(!perm::is_readable(perm::PERM_WRITE));
    }

    #[test]
    fn cluster_info() {
        let body = br#"{"brokerAddrTable":{"broker-a":{"brokerAddrs":{0:"10.0.0.1:10911"},"brokerName":"broker-a","cluster":"c1","enableActingMaster":false}},"clusterAddrTable":{"c1":["broker-a"]}}"#;
        let info = ClusterInfo::parse(body).unwrap();
        assert_eq!(
            info.broker_addr_table["broker-a"].master_addr(),
            Some("10.0.0.1:10911")
        );
        assert!(info.cluster_addr_table["c1"].contains("broker-a"));
        assert_eq!(info.to_json(false), body.to_vec());
        let standard = info.to_json(true);
        assert_eq!(standard, encode_json(&info));
        assert_eq!(ClusterInfo::parse(&standard).unwrap(), info);
    }

    #[test]
    fn bad_route_bodies() {
        let err = TopicRouteData::parse(b"{\"brokerDatas\":[{\"brokerAddrs\":{\"x\":\"a\"}}]}")
            .unwrap_err();
        assert!(err.to_string().contains("TopicRouteData"), "{err}");
        assert!(TopicRouteData::parse(b"{\"queueDatas\":{}}").is_err());
        assert!(TopicRouteData::parse(b"not json").is_err());
    }
}
