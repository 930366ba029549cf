//! Registration with a nameserver or the control plane: REGISTER_BROKER with the topic table at
//! start, at once whenever the table changes (auto-created topics included), and every
//! `register_interval`; UNREGISTER_BROKER on clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::codec::body::{BodyError, RegisterBrokerBody, TopicConfigSerializeWrapper};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    RegisterBrokerRequestHeader, UnregisterBrokerRequestHeader,
};
use rocketmesh_filters::codec::message::body_crc;
use rocketmesh_filters::codec::RemotingCommand;
use tokio_util::sync::CancellationToken;

use super::Broker;
use rocketmesh_remoting::RemotingClient;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest pause between two registrations triggered by topic changes (bursts coalesce).
const MIN_GAP: Duration = Duration::from_millis(50);
/// First pause after a failed registration (doubling from here).
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between registration attempts while the nameserver is unreachable (capped by
/// the registration interval): a nameserver back from a restart has the broker within a second.
const RETRY_MAX: Duration = Duration::from_secs(1);

fn register_command(broker: &Broker) -> RemotingCommand {
    let addr = broker.config.advertise.clone().unwrap_or_default();
    register_request(
        &broker.config.name,
        &addr,
        &broker.config.cluster,
        broker.topics.snapshot(),
        false,
    )
    .expect("an uncompressed registration body always encodes")
}

/// A REGISTER_BROKER request of master `name` at `addr` with its topic table, the body JSON or
/// (`compressed`, as 5.x brokers with many topics send it) deflated, with its crc32.
pub fn register_request(
    name: &str,
    addr: &str,
    cluster: &str,
    topics: TopicConfigSerializeWrapper,
    compressed: bool,
) -> Result<RemotingCommand, BodyError> {
    let body = RegisterBrokerBody {
        topic_config_serialize_wrapper: topics,
        filter_server_list: Vec::new(),
    }
    .encode(compressed)?;
    let header = RegisterBrokerRequestHeader {
        broker_name: name.to_owned(),
        broker_addr: addr.to_owned(),
        cluster_name: cluster.to_owned(),
        ha_server_addr: addr.to_owned(),
        broker_id: 0,
        compressed: Some(compressed),
        body_crc32: Some(body_crc(&body)),
        ..RegisterBrokerRequestHeader::default()
    };
    Ok(
        RemotingCommand::request_with_header(request_code::REGISTER_BROKER, &header)
            .with_body(body),
    )
}

async fn register_once(
    broker: &Broker,
    client: &mut Option<RemotingClient>,
    namesrv: &str,
) -> bool {
    if client.as_ref().is_none_or(RemotingClient::is_closed) {
        let tls = broker.config.namesrv_tls.as_deref();
        match RemotingClient::connect_to_tls(namesrv, RPC_TIMEOUT, tls, None).await {
            Ok(c) => *client = Some(c),
            Err(e) => {
                tracing::warn!(%namesrv, "cannot reach the nameserver: {e}");
                return false;
            }
        }
    }
    let Some(c) = client.as_ref() else {
        return false;
    };
    match c.invoke(register_command(broker), RPC_TIMEOUT).await {
        Ok(resp) if resp.code() == response_code::SUCCESS => {
            tracing::debug!(%namesrv, "registered");
            broker
                .registered
                .send_if_modified(|r| !std::mem::replace(r, true));
            true
        }
        Ok(resp) => {
            tracing::warn!(%namesrv, code = resp.code(), remark = ?resp.remark(), "registration refused");
            false
        }
        Err(e) => {
            tracing::warn!(%namesrv, "registration failed: {e}");
            false
        }
    }
}

/// Keeps the broker registered until `shutdown`: at once on start and on every topic change,
/// every `register_interval` while the nameserver is there, and, when its connection breaks or a
/// registration fails, again as soon as the nameserver accepts: retries back off from
/// [`RETRY_MIN`] to [`RETRY_MAX`], never to a whole interval. A restarted nameserver starts empty;
/// the sooner brokers are back in it, the shorter the time it answers routes without them.
pub async fn run(broker: Arc<Broker>, namesrv: String, shutdown: CancellationToken) {
    let mut changes = broker.topics.subscribe();
    let mut client: Option<RemotingClient> = None;
    let retry_max = RETRY_MAX.min(broker.config.register_interval);
    let mut retry = RETRY_MIN;
    loop {
        let ok = register_once(&broker, &mut client, &namesrv).await;
        let wait = if ok {
            retry = RETRY_MIN;
            broker.config.register_interval
        } else {
            let wait = retry;
            retry = (retry * 2).min(retry_max);
            wait
        };
        // The connection registered on; it ending (the nameserver restarted or went away) is
        // the cue to register again, not the next interval.
        let conn = client.clone().filter(|_| ok);
        let broken = async {
            match conn {
                Some(c) => c.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = broken => {
                tracing::info!(%namesrv, "nameserver connection closed; registering again");
                // Its reader may already have seen the close; either way connect afresh.
                client = None;
                // Not a tight loop if the nameserver accepts and closes at once.
                tokio::time::sleep(RETRY_MIN).await;
            }
            r = changes.changed() => {
                if r.is_err() { return; }
                tokio::time::sleep(MIN_GAP).await;
                changes.mark_unchanged();
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// UNREGISTER_BROKER, best effort.
pub async fn unregister(broker: &Broker, namesrv: &str) {
    let header = UnregisterBrokerRequestHeader {
        broker_name: broker.config.name.clone(),
        broker_addr: broker.config.advertise.clone().unwrap_or_default(),
        cluster_name: broker.config.cluster.clone(),
        broker_id: 0,
    };
    let tls = broker.config.namesrv_tls.as_deref();
    let Ok(client) = RemotingClient::connect_to_tls(namesrv, RPC_TIMEOUT, tls, None).await else {
        return;
    };
    let cmd = RemotingCommand::request_with_header(request_code::UNREGISTER_BROKER, &header);
    if let Err(e) = client.invoke(cmd, RPC_TIMEOUT).await {
        tracing::warn!(%namesrv, "unregister failed: {e}");
    }
    client.close();
}
