//! The migration driver: one loop that moves every active migration on (see the state machine
//! in the parent module), asking the brokers over Remoting.
//!
//! * **Preparing**: UPDATE_AND_CREATE_TOPIC (17) on the target's master with the source's
//!   queue counts (an existing topic is left alone), then wait until the target's registration
//!   carries the topic (it re-registers at once on a topic change). Then the policy makes the
//!   target writable and the source read-only: **Draining**. No writable broker is lost in
//!   between: the source stays writable until the target is in the route.
//! * **Draining**: every check asks the source which groups consume the topic
//!   (QUERY_TOPIC_CONSUME_BY_WHO, 300) and, per group, GET_CONSUME_STATS (208) on the topic and on
//!   the group's pop-retry topic `%RETRY%<group>_<topic>`: remaining = broker offset - consumer
//!   offset + in-flight pops (popped, not acked: the bundled broker's `inFlight`). Pop moves the
//!   consumer offset at once, so without `inFlight` (an Apache broker) un-acked pops are not
//!   seen until they are revived into the retry topic; then `settle_checks` should span the
//!   pop invisible time. When every group's remaining is 0 for `settle_checks` checks in a row,
//!   the source leaves the topic's route: **Done**.
//!
//! A broker that cannot be asked is recorded in `last_error` and asked again at the next check;
//! the migration never moves on from an answer it did not get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::clock::unix_ms;
use rocketmesh_filters::codec::body::{ConsumeStats, GroupList};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    CreateTopicRequestHeader, GetConsumeStatsRequestHeader, QueryTopicConsumeByWhoRequestHeader,
};
use rocketmesh_filters::codec::pop::pop_retry_topic_v1;
use rocketmesh_filters::codec::RemotingCommand;
use tokio_util::sync::CancellationToken;

use super::{MigrationState, Traffic};
use crate::remoting::RemotingClient;

/// Migration driver settings.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Time between checks.
    pub check_every: Duration,
    /// Consecutive drained checks before the source leaves the route.
    pub settle_checks: u32,
    /// How long the target may take to register the topic before the migration fails.
    pub prepare_timeout: Duration,
    /// Deadline of one broker request (connect included).
    pub request_timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            check_every: Duration::from_secs(1),
            settle_checks: 3,
            prepare_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(3),
        }
    }
}

/// Runs the driver until `stop`.
pub async fn run(traffic: Arc<Traffic>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(traffic.opts.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let active: Vec<String> = traffic
            .migrations()
            .into_iter()
            .filter(|m| m.state.is_active())
            .map(|m| m.topic)
            .collect();
        for topic in active {
            step(&traffic, &topic).await;
        }
    }
}

/// Moves one migration on by at most one state.
async fn step(t: &Traffic, topic: &str) {
    let Some(m) = t.migration(topic) else { return };
    let result = match m.state {
        MigrationState::Preparing => prepare(t, topic, &m.from, &m.to, m.started_ms).await,
        MigrationState::Draining => drain(t, topic, &m.from).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(topic, from = %m.from, to = %m.to, "migration check failed: {e}");
        record(t, topic, |m| m.last_error = Some(e.clone()));
    }
}

/// Updates the migration of `topic` if it is still active (an abort may have come meanwhile).
fn record(t: &Traffic, topic: &str, f: impl FnOnce(&mut super::Migration)) {
    let r = t.update(&[topic], |s| {
        if let Some(m) = s.migrations.get_mut(topic).filter(|m| m.state.is_active()) {
            f(m);
            m.updated_ms = unix_ms();
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::error!(topic, "migration progress not saved: {e}");
    }
}

async fn prepare(
    t: &Traffic,
    topic: &str,
    from: &str,
    to: &str,
    started: i64,
) -> Result<(), String> {
    let route = t.catalog.topic_route(topic);
    let registered_on_target = route
        .as_ref()
        .is_some_and(|r| r.brokers.iter().any(|b| b.broker_name == to));
    if registered_on_target {
        let r = t.update(&[topic], |s| {
            let Some(m) = s.migrations.get_mut(topic) else {
                return Ok(());
            };
            if m.state != MigrationState::Preparing {
                return Ok(());
            }
            m.state = MigrationState::Draining;
            m.updated_ms = unix_ms();
            m.last_error = None;
            let mut p = m.prior.clone().unwrap_or_default();
            p.weights.clear();
            p.no_write.insert(from.to_owned());
            p.no_write.remove(to);
            p.no_read.remove(to);
            p.no_read.remove(from);
            super::Traffic::put_policy(s, topic, p)
        });
        tracing::info!(
            topic,
            from,
            to,
            "migration: target registered the topic, draining the source"
        );
        return r.map_err(|e| e.to_string());
    }
    if unix_ms() - started > t.opts.prepare_timeout.as_millis() as i64 {
        record(t, topic, |m| {
            m.state = MigrationState::Failed;
            m.last_error = Some(format!(
                "{to} did not register {topic} within {:?}",
                t.opts.prepare_timeout
            ));
        });
        return Ok(());
    }
    let addr = t
        .nameserver
        .master_addr(to)
        .ok_or_else(|| format!("broker {to} has no registered master"))?;
    let (read, write) = route
        .as_ref()
        .and_then(|r| r.brokers.iter().find(|b| b.broker_name == from))
        .map_or((8, 8), |b| (b.read_queue_num, b.write_queue_num));
    let header = CreateTopicRequestHeader {
        topic: topic.to_owned(),
        default_topic: "TBW102".into(),
        read_queue_nums: read as i32,
        write_queue_nums: write as i32,
        perm: 6,
        topic_filter_type: "SINGLE_TAG".into(),
        topic_sys_flag: None,
        order: false,
        attributes: None,
    };
    let req = RemotingCommand::request_with_header(rc::UPDATE_AND_CREATE_TOPIC, &header);
    let resp = ask(t, &addr, req).await?;
    if resp.code() != response_code::SUCCESS {
        return Err(format!(
            "{to} refused to create {topic}: {} {}",
            resp.code(),
            resp.remark().unwrap_or_default()
        ));
    }
    Ok(())
}

async fn drain(t: &Traffic, topic: &str, from: &str) -> Result<(), String> {
    let addr = t
        .nameserver
        .master_addr(from)
        .ok_or_else(|| format!("broker {from} has no registered master (down?)"))?;
    let req = RemotingCommand::request_with_header(
        rc::QUERY_TOPIC_CONSUME_BY_WHO,
        &QueryTopicConsumeByWhoRequestHeader {
            topic: topic.to_owned(),
        },
    );
    let resp = ask(t, &addr, req).await?;
    let groups = if resp.code() == response_code::SUCCESS {
        GroupList::parse(resp.body())
            .map_err(|e| format!("{from}: bad group list: {e}"))?
            .group_list
    } else {
        return Err(format!(
            "{from}: QUERY_TOPIC_CONSUME_BY_WHO answered {} {}",
            resp.code(),
            resp.remark().unwrap_or_default()
        ));
    };
    let mut remaining = BTreeMap::new();
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let mut left = 0;
        for tp in [topic.to_owned(), pop_retry_topic_v1(group, topic)] {
            left += backlog(t, &addr, from, group, &tp).await?;
        }
        remaining.insert(group.clone(), left);
    }
    let drained = remaining.values().all(|n| *n == 0);
    let settle = t.opts.settle_checks.max(1);
    let mut done = false;
    record(t, topic, |m| {
        m.remaining = remaining;
        m.last_error = None;
        m.drained_checks = if drained { m.drained_checks + 1 } else { 0 };
        done = m.drained_checks >= settle;
    });
    if done {
        let r = t.update(&[topic], |s| {
            let Some(m) = s.migrations.get_mut(topic) else {
                return Ok(());
            };
            if m.state != MigrationState::Draining {
                return Ok(());
            }
            m.state = MigrationState::Done;
            m.updated_ms = unix_ms();
            let mut p = s.policies.get(topic).cloned().unwrap_or_default();
            p.no_read.insert(from.to_owned());
            p.no_write.insert(from.to_owned());
            super::Traffic::put_policy(s, topic, p)
        });
        tracing::info!(topic, from, "migration done: the source left the route");
        return r.map_err(|e| e.to_string());
    }
    Ok(())
}

/// Messages of `topic` on the broker at `addr` that `group` has not consumed (in-flight pops
/// included). A topic the broker does not have holds nothing.
async fn backlog(
    t: &Traffic,
    addr: &str,
    broker: &str,
    group: &str,
    topic: &str,
) -> Result<i64, String> {
    let req = RemotingCommand::request_with_header(
        rc::GET_CONSUME_STATS,
        &GetConsumeStatsRequestHeader {
            consumer_group: group.to_owned(),
            topic: Some(topic.to_owned()),
        },
    );
    let resp = ask(t, addr, req).await?;
    if resp.code() != response_code::SUCCESS {
        return Err(format!(
            "{broker}: GET_CONSUME_STATS {group}/{topic} answered {} {}",
            resp.code(),
            resp.remark().unwrap_or_default()
        ));
    }
    let stats = ConsumeStats::parse(resp.body())
        .map_err(|e| format!("{broker}: bad consume stats: {e}"))?;
    Ok(stats
        .offset_table
        .values()
        .map(|o| (o.broker_offset - o.consumer_offset).max(0) + o.in_flight.unwrap_or(0).max(0))
        .sum())
}

/// One request to a broker on a connection of its own (checks are rare; no pool needed).
async fn ask(t: &Traffic, addr: &str, req: RemotingCommand) -> Result<RemotingCommand, String> {
    let timeout = t.opts.request_timeout;
    let client = RemotingClient::connect_to(addr, timeout, None)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let r = client
        .invoke(req, timeout)
        .await
        .map_err(|e| format!("{addr}: {e}"));
    client.close();
    r
}
