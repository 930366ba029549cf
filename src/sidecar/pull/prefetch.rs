//! Pops for pulls: where a virtual queue's pops go ([`PopTarget`]), one POP upstream, and the
//! background prefetch. Once a pull is answered with messages the queue's next batch is popped
//! without long polling (see the translator's prefetch: one pop in flight per queue, a bounded
//! buffer); the next pull is answered from it at once, or waits for it while it is in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use rocketmesh_filters::clock::unix_ms;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    PopMessageRequestHeader, PopMessageResponseHeader, PullMessageRequestHeader,
};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_filters::consume::{PrefetchTicket, Translator, VQueueKey};
use rocketmesh_xds::model::TopicRoute;
use tokio::sync::Notify;

use crate::remoting::Drain;
use crate::sidecar::context::Context;
use crate::sidecar::error::SidecarError;

/// Wake-up shards for pulls waiting on a prefetch.
const PREFETCH_SHARDS: usize = 64;

/// Where a virtual queue's pops go: the broker's address and a POP header to fill in.
#[derive(Debug, Clone)]
pub struct PopTarget {
    pub address: String,
    pub broker: String,
    pub connect_timeout: Option<Duration>,
    pub header: PopMessageRequestHeader,
}

/// Why a POP brought nothing.
#[derive(Debug)]
pub enum PopFailed {
    /// Not delivered or no answer: nothing was handed out.
    Transport(String),
    /// The broker refused it: the pull is refused the same way.
    Refused(SidecarError),
}

/// The pops of the virtual queue `h` pulls, which is `real_queue` of `broker`.
pub fn pop_target(
    ctx: &Context,
    route: &TopicRoute,
    broker: &str,
    real_queue: i32,
    h: &PullMessageRequestHeader,
    invisible_time_ms: i64,
) -> Result<PopTarget, SidecarError> {
    let (ep, connect_timeout) = ctx.router.readable(route, broker)?;
    let header = PopMessageRequestHeader {
        consumer_group: h.consumer_group.clone(),
        topic: h.topic.clone(),
        queue_id: real_queue,
        invisible_time: invisible_time_ms,
        // max_msg_nums, poll_time and born_time are set per pop (`pop_upstream`). Start from the
        // queue's first message for a new group: nothing produced before the first pull is
        // skipped.
        init_mode: 0,
        exp_type: Some(h.expression_type.clone().unwrap_or_else(|| "TAG".into())),
        exp: Some(
            h.subscription
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "*".into()),
        ),
        ..Default::default()
    };
    Ok(PopTarget {
        address: ep.address.clone(),
        broker: ep.broker_name.clone(),
        connect_timeout,
        header,
    })
}

/// One POP of `target`: the response header and body when it found messages, `None` when it
/// found none.
pub async fn pop_upstream(
    ctx: &Context,
    target: &PopTarget,
    max_msgs: i32,
    poll: Duration,
) -> Result<Option<(PopMessageResponseHeader, BytesMut)>, PopFailed> {
    let mut pop = target.header.clone();
    pop.max_msg_nums = max_msgs;
    pop.poll_time = i64::try_from(poll.as_millis()).unwrap_or(i64::MAX);
    pop.born_time = unix_ms();
    let pop_req = RemotingCommand::request_with_header(rc::POP_MESSAGE, &pop);
    let mut resp = ctx
        .upstreams
        .invoke(
            &target.address,
            pop_req,
            ctx.cfg.request_timeout + poll,
            target.connect_timeout,
        )
        .await
        .map_err(|e| PopFailed::Transport(e.to_string()))?;
    match resp.code() {
        response_code::SUCCESS => {
            let ph: PopMessageResponseHeader = resp
                .decode_header()
                .map_err(|e| PopFailed::Refused(e.into()))?;
            // Patched in place: no copy when the body is not shared (today the upstream reader's
            // frames share its read buffer, so this copies).
            let body = resp
                .take_body()
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            Ok(Some((ph, body)))
        }
        response_code::PULL_NOT_FOUND
        | response_code::POLLING_TIMEOUT
        | response_code::POLLING_FULL
        | response_code::NO_MESSAGE => Ok(None),
        code => Err(PopFailed::Refused(SidecarError::Refused {
            code,
            remark: resp.remark().unwrap_or("pop failed").to_owned(),
        })),
    }
}

/// Background pops ahead of the pulls.
#[derive(Debug)]
pub struct Prefetcher {
    ctx: Arc<Context>,
    t: Arc<Mutex<Translator>>,
    /// Woken when a prefetch pop finished, for pulls waiting on it; sharded by virtual queue so a
    /// pop wakes (about) only the pull of its own queue.
    wakeups: [Notify; PREFETCH_SHARDS],
    drain: Drain,
}

impl Prefetcher {
    pub fn new(ctx: Arc<Context>, t: Arc<Mutex<Translator>>, drain: Drain) -> Self {
        Prefetcher {
            ctx,
            t,
            wakeups: std::array::from_fn(|_| Notify::new()),
            drain,
        }
    }

    /// What a pull waiting on `key`'s prefetch waits on.
    pub fn wakeup(&self, key: &VQueueKey) -> &Notify {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.wakeups[(h % PREFETCH_SHARDS as u64) as usize]
    }

    /// Wakes every waiting pull (drain: they answer at once).
    pub fn wake_all(&self) {
        for n in &self.wakeups {
            n.notify_waiters();
        }
    }

    /// Pops ahead for `key` while the translator wants more; pulls waiting for it are woken
    /// after each pop. Nothing new starts once the sidecar drains.
    pub fn spawn(self: &Arc<Self>, key: &VQueueKey, target: &PopTarget) {
        if self.drain.is_draining() {
            return;
        }
        let Some(ticket) = self.t.lock().begin_prefetch(key) else {
            return;
        };
        let me = self.clone();
        let key = key.clone();
        let target = target.clone();
        self.drain.spawn(async move {
            let mut ticket = Some(ticket);
            while let Some(t) = ticket {
                let more = me.one(&key, &target, t).await;
                me.wakeup(&key).notify_waiters();
                // Back to back while records keep coming and the buffer has room.
                ticket = if more && !me.drain.is_draining() {
                    me.t.lock().begin_prefetch(&key)
                } else {
                    None
                };
            }
            let held = me.t.lock().held();
            me.ctx.stats.gauge_set(
                crate::metrics::Gauge::OutstandingHandles,
                held.try_into().unwrap_or(i64::MAX),
            );
        });
    }

    /// One prefetch pop; true when it added records.
    async fn one(&self, key: &VQueueKey, target: &PopTarget, ticket: PrefetchTicket) -> bool {
        let found = match pop_upstream(&self.ctx, target, ticket.max_msgs, Duration::ZERO).await {
            Ok(found) => found,
            Err(PopFailed::Transport(e)) => {
                tracing::debug!("prefetch pop failed: {e}");
                None
            }
            Err(PopFailed::Refused(e)) => {
                tracing::debug!(code = e.code(), "prefetch pop refused: {e}");
                None
            }
        };
        let (found_header, found_body) = found.unzip();
        let done = self.t.lock().complete_prefetch(
            key,
            ticket,
            &target.broker,
            found_header.as_ref().zip(found_body),
            self.ctx.cfg.advertise.parse().ok(),
            unix_ms(),
        );
        done.unwrap_or_else(|e| {
            // Not stamped, not held: the broker redelivers the batch after its invisible time.
            tracing::warn!("cannot translate a prefetched pop response: {e}");
            false
        })
    }
}
