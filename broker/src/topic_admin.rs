//! The broker's nameserver-style and topic admin answers: GET_ROUTEINFO_BY_TOPIC (the broker
//! answers routes itself, so an SDK can use it as its nameserver), GET_BROKER_CLUSTER_INFO,
//! UPDATE_AND_CREATE_TOPIC and GET_ALL_TOPIC_CONFIG.

use rocketmesh_filters::codec::body::{
    ClusterInfo, QueueData, RouteJsonStyle, TopicConfig, TopicRouteData,
};
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::headers::{CreateTopicRequestHeader, GetRouteInfoRequestHeader};
use rocketmesh_filters::codec::RemotingCommand;

use super::processor::{error, header, reply};
use super::topics::AUTO_CREATE_TOPIC_KEY;
use super::Broker;

pub(crate) fn route(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: GetRouteInfoRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let Some(cfg) = b.topics.get(&h.topic) else {
        return error(
            b,
            req,
            code::TOPIC_NOT_EXIST,
            format!(
                "No topic route info in name server for the topic: {}",
                h.topic
            ),
        );
    };
    let route = TopicRouteData {
        queue_datas: vec![QueueData {
            broker_name: b.config.name.clone(),
            read_queue_nums: cfg.read_queue_nums,
            write_queue_nums: cfg.write_queue_nums,
            perm: cfg.perm,
            topic_sys_flag: cfg.topic_sys_flag,
        }],
        broker_datas: vec![b.broker_data()],
        ..TopicRouteData::default()
    };
    let style =
        RouteJsonStyle::for_request(req.version(), h.accept_standard_json_only.unwrap_or(false));
    reply(b, req, code::SUCCESS).with_body(route.encode(style))
}

pub(crate) fn cluster_info(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let mut info = ClusterInfo::default();
    info.broker_addr_table
        .insert(b.config.name.clone(), b.broker_data());
    info.cluster_addr_table.insert(
        b.config.cluster.clone(),
        std::iter::once(b.config.name.clone()).collect(),
    );
    let standard = RouteJsonStyle::for_request(req.version(), false).is_standard();
    reply(b, req, code::SUCCESS).with_body(info.to_json(standard))
}

pub(crate) fn create_topic(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: CreateTopicRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    if h.topic == AUTO_CREATE_TOPIC_KEY {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            "the topic conflicts with the auto-create key",
        );
    }
    let cfg = TopicConfig {
        topic_name: h.topic,
        read_queue_nums: h.read_queue_nums,
        write_queue_nums: h.write_queue_nums,
        perm: h.perm,
        topic_sys_flag: h.topic_sys_flag.unwrap_or(0),
        order: h.order,
        ..TopicConfig::default()
    };
    match b.topics.create(cfg) {
        Ok(_) => reply(b, req, code::SUCCESS),
        Err(e) => error(b, req, code::SYSTEM_ERROR, e.to_string()),
    }
}

pub(crate) fn all_topics(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    reply(b, req, code::SUCCESS).with_body(b.topics.snapshot().to_json())
}
