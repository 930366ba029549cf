//! Helpers shared by the integration tests (each test binary includes this with `mod common;`
//! and uses what it needs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::CreateTopicRequestHeader;
use rocketmesh_filters::codec::RemotingCommand;

const T: Duration = Duration::from_secs(10);

/// `N` distinct free ports (all held until every one is picked: two `free_port` calls in a row
/// can return the same port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A port free on loopback right now (for processes that must restart on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// UPDATE_AND_CREATE_TOPIC on one broker: `perm`, `queues` read and write queues. The broker
/// re-registers at once when it has a nameserver.
pub async fn create_topic(broker: SocketAddr, topic: &str, perm: i32, queues: i32) {
    let client = RemotingClient::connect_timeout(broker, T, None)
        .await
        .unwrap();
    let h = CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm,
        topic_filter_type: "SINGLE_TAG".into(),
        order: false,
        ..Default::default()
    };
    let resp = client
        .invoke(
            RemotingCommand::request_with_header(request_code::UPDATE_AND_CREATE_TOPIC, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    client.close();
}
