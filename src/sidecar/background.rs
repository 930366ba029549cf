//! Background work of a sidecar: client expiry, heartbeats to the brokers on the clients'
//! behalf, and the relay of broker-to-client requests (consumer-ids-changed notifications,
//! transaction checks). Every task runs on the sidecar's [`Drain`] and ends with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::codec::body::{ConsumerData, HeartbeatData, ProducerData};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::NotifyConsumerIdsChangedRequestHeader;
use rocketmesh_filters::codec::message::{decode_records, property_keys};
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use tokio::sync::mpsc;

use super::dispatch::SidecarCore;
use super::groups::Groups;
use super::upstream::BrokerRequest;
use crate::remoting::Drain;

/// Clients silent past the expiry leave their groups.
pub async fn expire_clients(groups: Arc<Groups>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        groups.expire();
    }
}

/// Announces the clients' groups to every broker in use, as one client (the sidecar), so brokers
/// know the groups (consumer notifications, transaction checks) although the clients never talk
/// to them directly.
pub async fn heartbeat_brokers(core: Arc<SidecarCore>, addr: SocketAddr, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    let upstreams = &core.ctx.upstreams;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = core.groups.member_joined() => {}
        }
        let beats = core.groups.heartbeats();
        if beats.is_empty() {
            continue;
        }
        let mut merged = HeartbeatData {
            client_id: format!("rocketmesh@{addr}"),
            ..HeartbeatData::default()
        };
        for hb in beats {
            for c in hb.consumer_data_set {
                if !merged
                    .consumer_data_set
                    .iter()
                    .any(|m: &ConsumerData| m.group_name == c.group_name)
                {
                    merged.consumer_data_set.push(c);
                }
            }
            for p in hb.producer_data_set {
                if !merged
                    .producer_data_set
                    .iter()
                    .any(|m: &ProducerData| m.group_name == p.group_name)
                {
                    merged.producer_data_set.push(p);
                }
            }
        }
        let body = merged.to_json();
        for ep in upstreams.endpoints() {
            let cmd = RemotingCommand::request(rc::HEART_BEAT).with_body(body.clone());
            if let Err(e) = upstreams
                .invoke(&ep, cmd, Duration::from_secs(3), None)
                .await
            {
                tracing::debug!(broker = %ep, "heartbeat on the clients' behalf failed: {e}");
            }
        }
    }
}

/// Relays requests brokers send on our upstream connections to a client of the right group.
/// Each relay runs as a task of `drain` (a client's answer may take seconds).
pub async fn relay_broker_requests(
    core: Arc<SidecarCore>,
    mut rx: mpsc::Receiver<BrokerRequest>,
    drain: Drain,
) {
    while let Some(req) = rx.recv().await {
        let core = core.clone();
        drain.spawn(async move { relay_one(&core, req).await });
    }
}

async fn relay_one(core: &SidecarCore, r: BrokerRequest) {
    let BrokerRequest { addr, cmd, client } = r;
    let code = cmd.code();
    let targets = match code {
        rc::NOTIFY_CONSUMER_IDS_CHANGED => {
            match cmd.decode_header::<NotifyConsumerIdsChangedRequestHeader>() {
                Ok(h) => core.groups.consumer_connections(&h.consumer_group),
                Err(_) => Vec::new(),
            }
        }
        rc::CHECK_TRANSACTION_STATE => {
            // The producer answers with END_TRANSACTION naming these ids: route it back here.
            for key in ["msgId", "transactionId"] {
                if let Some(id) = cmd.ext().get(key) {
                    core.txns.remember(id, &addr);
                }
            }
            // The half message's producer group is in its properties.
            let group = decode_records(cmd.body())
                .ok()
                .and_then(|msgs| msgs.into_iter().next())
                .and_then(|m| m.properties.get(property_keys::PGROUP).map(str::to_owned));
            group
                .map(|g| core.groups.producer_connections(&g))
                .unwrap_or_default()
        }
        _ => match cmd.ext().get("consumerGroup") {
            Some(g) => core.groups.consumer_connections(g),
            None => Vec::new(),
        },
    };
    let oneway = cmd.is_oneway();
    let opaque = cmd.opaque();
    if code == rc::NOTIFY_CONSUMER_IDS_CHANGED {
        for conn in &targets {
            conn.notify(cmd.clone());
        }
        return;
    }
    let Some(conn) = targets.into_iter().next() else {
        tracing::debug!(broker = %addr, code, "no client to relay a broker request to");
        if !oneway {
            let resp = cmd
                .response_to(response_code::SYSTEM_ERROR, ResponseEncoding::Json)
                .with_remark(format!(
                    "no client of the group is connected to sidecar {}",
                    core.ctx.cfg.advertise
                ));
            let _ = client.respond(resp).await;
        }
        return;
    };
    if oneway || code == rc::CHECK_TRANSACTION_STATE {
        conn.notify(cmd);
        return;
    }
    // A broker asking a client (GET_CONSUMER_RUNNING_INFO, CONSUME_MESSAGE_DIRECTLY for a tool)
    // waits 10 s and then answers CONSUME_MSG_TIMEOUT; so does the relay.
    let (wait, timeout_code) = match code {
        rc::GET_CONSUMER_RUNNING_INFO | rc::CONSUME_MESSAGE_DIRECTLY => {
            (Duration::from_secs(10), response_code::CONSUME_MSG_TIMEOUT)
        }
        _ => (Duration::from_secs(5), response_code::SYSTEM_ERROR),
    };
    match conn.invoke(cmd.clone(), wait).await {
        Some(mut resp) => {
            resp.set_opaque(opaque);
            let _ = client.respond(resp).await;
        }
        None => {
            let resp = cmd
                .response_to(timeout_code, ResponseEncoding::Json)
                .with_remark(format!(
                    "the client did not answer within {} s",
                    wait.as_secs()
                ));
            let _ = client.respond(resp).await;
        }
    }
}
