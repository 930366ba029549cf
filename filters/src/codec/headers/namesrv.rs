//! Name-server and administration headers: GET_ROUTEINFO_BY_TOPIC (105), REGISTER_BROKER (103),
//! UNREGISTER_BROKER (104) and UPDATE_AND_CREATE_TOPIC (17) (sections 4.14 and 4.15).

command_header! {
    /// Request header of GET_ROUTEINFO_BY_TOPIC (105), client to name server.
    pub struct GetRouteInfoRequestHeader {
        /// Topic whose route is asked for.
        required topic: String = "topic",
        /// Whether the answer must be standard JSON (quoted `brokerAddrs` keys; 4.9.4+).
        optional accept_standard_json_only: bool = "acceptStandardJsonOnly",
    }
}

command_header! {
    /// Request header of REGISTER_BROKER (103), broker to name server.
    pub struct RegisterBrokerRequestHeader {
        /// Broker name (shared by master and slaves).
        required broker_name: String = "brokerName",
        /// Broker address, `ip:port`.
        required broker_addr: String = "brokerAddr",
        /// Cluster the broker belongs to.
        required cluster_name: String = "clusterName",
        /// HA service address, `ip:port`.
        required ha_server_addr: String = "haServerAddr",
        /// Broker id; 0 is the master.
        required broker_id: i64 = "brokerId",
        /// Heartbeat timeout the name server should apply, in ms (5.x).
        optional heartbeat_timeout_millis: i64 = "heartbeatTimeoutMillis",
        /// Whether acting-master mode is enabled (5.x).
        optional enable_acting_master: bool = "enableActingMaster",
        /// Whether the body is compressed.
        optional compressed: bool = "compressed",
        /// CRC32 of the body.
        optional body_crc32: i32 = "bodyCrc32",
    }
}

command_header! {
    /// Response header of REGISTER_BROKER.
    pub struct RegisterBrokerResponseHeader {
        /// HA address of the master, for a slave.
        optional ha_server_addr: String = "haServerAddr",
        /// Address of the master, for a slave.
        optional master_addr: String = "masterAddr",
    }
}

command_header! {
    /// Request header of UNREGISTER_BROKER (104), broker to name server.
    pub struct UnregisterBrokerRequestHeader {
        /// Broker name.
        required broker_name: String = "brokerName",
        /// Broker address, `ip:port`.
        required broker_addr: String = "brokerAddr",
        /// Cluster the broker belongs to.
        required cluster_name: String = "clusterName",
        /// Broker id; 0 is the master.
        required broker_id: i64 = "brokerId",
    }
}

command_header! {
    /// Request header of UPDATE_AND_CREATE_TOPIC (17), admin to broker.
    pub struct CreateTopicRequestHeader {
        /// Topic to create or update.
        required topic: String = "topic",
        /// Template topic (`TBW102`).
        required default_topic: String = "defaultTopic",
        /// Number of read queues.
        required read_queue_nums: i32 = "readQueueNums",
        /// Number of write queues.
        required write_queue_nums: i32 = "writeQueueNums",
        /// Permission bits (2 write, 4 read; 6 = read+write).
        required perm: i32 = "perm",
        /// Tag filter type, `SINGLE_TAG` or `MULTI_TAG`.
        required topic_filter_type: String = "topicFilterType",
        /// Topic sys flag (unit bits).
        optional topic_sys_flag: i32 = "topicSysFlag",
        /// Whether the topic is ordered.
        required order: bool = "order",
        /// Topic attributes, `+key=value` pairs joined by commas (5.x).
        optional attributes: String = "attributes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    #[test]
    fn route_info_round_trip_and_errors() {
        let full = GetRouteInfoRequestHeader {
            topic: "TopicA".into(),
            accept_standard_json_only: Some(true),
        };
        let minimal = GetRouteInfoRequestHeader {
            topic: "TopicA".into(),
            accept_standard_json_only: None,
        };
        check_header(&full, &minimal);
        assert_eq!(
            GetRouteInfoRequestHeader::from_ext(&ext(&[("acceptStandardJsonOnly", "true")])),
            Err(HeaderError::Missing { field: "topic" })
        );
    }

    #[test]
    fn register_broker_round_trip_and_errors() {
        let full = RegisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: "10.0.0.1:10911".into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: "10.0.0.1:10912".into(),
            broker_id: 0,
            heartbeat_timeout_millis: Some(120_000),
            enable_acting_master: Some(false),
            compressed: Some(false),
            body_crc32: Some(-123_456),
        };
        let minimal = RegisterBrokerRequestHeader {
            heartbeat_timeout_millis: None,
            enable_acting_master: None,
            compressed: None,
            body_crc32: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let full = RegisterBrokerResponseHeader {
            ha_server_addr: Some("10.0.0.1:10912".into()),
            master_addr: Some("10.0.0.1:10911".into()),
        };
        check_header(&full, &RegisterBrokerResponseHeader::default());
        assert_eq!(
            RegisterBrokerResponseHeader::from_ext(&ext(&[])),
            Ok(RegisterBrokerResponseHeader::default())
        );

        let full = UnregisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: "10.0.0.1:10911".into(),
            cluster_name: "DefaultCluster".into(),
            broker_id: 1,
        };
        check_header(&full, &full);
        let mut no_id = full.to_ext();
        no_id.remove("brokerId");
        assert_eq!(
            UnregisterBrokerRequestHeader::from_ext(&no_id),
            Err(HeaderError::Missing { field: "brokerId" })
        );
    }

    #[test]
    fn create_topic_round_trip_and_errors() {
        let full = CreateTopicRequestHeader {
            topic: "TopicA".into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 8,
            write_queue_nums: 8,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            topic_sys_flag: Some(0),
            order: false,
            attributes: Some("+message.type=NORMAL".into()),
        };
        let minimal = CreateTopicRequestHeader {
            topic_sys_flag: None,
            attributes: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
    }
}
