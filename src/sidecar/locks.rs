//! Orderly consumers: LOCK_BATCH_MQ (41) and UNLOCK_BATCH_MQ (42) on virtual queues become the
//! same requests on the real queues behind them, at each broker, in the client's own name.
//!
//! A 4.x orderly consumer locks the queues its rebalance gave it, re-locks them every 20 s, and
//! pulls only the queues it holds. Behind a sidecar every consumer is told it is alone (it takes
//! every virtual queue), so the brokers' locks decide: each real queue is served to one client of
//! the group at a time, whichever sidecar it is behind, and its pulls are relayed with real
//! offsets (`pull::direct`), committed to the broker, so the next holder goes on where the last
//! one stopped. Failure modes (ARCHITECTURE.md): a consumer that dies holding queues is unlocked
//! by its sidecar when its connection closes; a sidecar that dies with it leaves the locks to
//! expire at the broker (Apache: 60 s); either way another consumer takes them at its next
//! re-lock (within 20 s). Queues are spread by who locks first, not evenly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use parking_lot::Mutex;
use rocketmesh_filters::codec::body::{
    LockBatchRequestBody, LockBatchResponseBody, MessageQueue, UnlockBatchRequestBody,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;
use super::groups::Groups;
use crate::metrics::Gauge;

/// Most connections with locks tracked (for unlock on close).
const MAX_TRACKED: usize = 10_000;

/// One broker's share of a lock request: its real queues, and the virtual queue each stands for.
#[derive(Debug, Default)]
struct BrokerShare {
    /// Any topic of the share (to find the broker's endpoint through the topic's route).
    topic: String,
    real: Vec<MessageQueue>,
    to_virtual: HashMap<MessageQueue, MessageQueue>,
}

/// What a connection's clients hold, to release when it closes: (group, client) -> broker ->
/// (topic of the share, real queues).
type Held = HashMap<(String, String), BTreeMap<String, (String, Vec<MessageQueue>)>>;

/// The lock relay and what each downstream connection holds.
#[derive(Debug, Default)]
pub struct Locks {
    held: Mutex<HashMap<u64, Held>>,
    /// Queues newly locked by a connection's client, whose next pull must start at least at the
    /// group's committed offset: (connection, group, real queue).
    fresh: Mutex<HashSet<(u64, String, MessageQueue)>>,
    /// Unlocks of closed connections in flight (awaited at shutdown).
    tasks: TaskTracker,
}

/// Splits virtual queues by the real broker behind them.
async fn shares(
    ctx: &Context,
    mqs: &[MessageQueue],
) -> Result<BTreeMap<String, BrokerShare>, SidecarError> {
    let mut by_broker: BTreeMap<String, BrokerShare> = BTreeMap::new();
    for mq in mqs {
        let route = ctx.router.route(&mq.topic, Gauge::TotalPending).await?;
        let view = ctx.router.view(&route);
        let Some((broker, real_queue)) = view.queues.read_target(mq.queue_id) else {
            continue; // a queue the route no longer has: not locked
        };
        let share = by_broker.entry(broker.to_owned()).or_default();
        if share.topic.is_empty() {
            share.topic = mq.topic.clone();
        }
        let real = MessageQueue::new(mq.topic.clone(), broker, real_queue);
        share.to_virtual.insert(real.clone(), mq.clone());
        share.real.push(real);
    }
    Ok(by_broker)
}

/// Sends LOCK or UNLOCK for `real` to `broker`; the broker's answer.
async fn at_broker(
    ctx: &Context,
    code: i32,
    topic: &str,
    broker: &str,
    body: &LockBatchRequestBody,
) -> Result<RemotingCommand, SidecarError> {
    let (ep, connect_timeout) = ctx
        .router
        .broker_endpoint(topic, &body.consumer_group, broker)
        .await?;
    let req = RemotingCommand::request(code).with_body(body.to_json());
    let resp = ctx
        .forward(&ep.address, connect_timeout, req, ctx.cfg.request_timeout)
        .await?;
    if resp.code() != response_code::SUCCESS {
        return Err(SidecarError::Refused {
            code: resp.code(),
            remark: resp.remark().unwrap_or("lock refused").to_owned(),
        });
    }
    Ok(resp)
}

impl Locks {
    /// LOCK_BATCH_MQ: locks the real queues at their brokers; answers the virtual queues granted.
    pub async fn lock(
        &self,
        ctx: &Context,
        groups: &Groups,
        req: &RemotingCommand,
        conn_id: u64,
    ) -> Result<RemotingCommand, SidecarError> {
        let body = LockBatchRequestBody::parse(req.body())
            .map_err(|e| SidecarError::bad_body("lock body", e))?;
        groups.mark_orderly(&body.consumer_group);
        let mut granted = Vec::new();
        let mut holding: BTreeMap<String, (String, Vec<MessageQueue>)> = BTreeMap::new();
        for (broker, share) in shares(ctx, &body.mq_set).await? {
            let real_body = LockBatchRequestBody {
                client_id: body.client_id.clone(),
                consumer_group: body.consumer_group.clone(),
                mq_set: share.real.clone(),
                only_this_broker: false,
            };
            let resp =
                match at_broker(ctx, rc::LOCK_BATCH_MQ, &share.topic, &broker, &real_body).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Those queues stay unlocked: the consumer tries again at its next re-lock.
                        tracing::info!(%broker, group = %body.consumer_group, "lock failed: {e}");
                        continue;
                    }
                };
            let ok = LockBatchResponseBody::parse(resp.body())
                .map_err(|e| SidecarError::bad_body("lock answer", e))?;
            let mut real_held = Vec::new();
            for real in ok.lock_ok_mq_set {
                if let Some(v) = share.to_virtual.get(&real) {
                    granted.push(v.clone());
                    real_held.push(real);
                }
            }
            holding.insert(broker, (share.topic.clone(), real_held));
        }
        self.track(conn_id, &body, holding);
        let answer = LockBatchResponseBody {
            lock_ok_mq_set: granted,
        };
        Ok(ctx
            .reply(req, response_code::SUCCESS, None)
            .with_body(answer.to_json()))
    }

    /// UNLOCK_BATCH_MQ: unlocks the real queues at their brokers.
    pub async fn unlock(
        &self,
        ctx: &Context,
        req: &RemotingCommand,
        conn_id: u64,
    ) -> Result<RemotingCommand, SidecarError> {
        let body = UnlockBatchRequestBody::parse(req.body())
            .map_err(|e| SidecarError::bad_body("unlock body", e))?;
        for (broker, share) in shares(ctx, &body.mq_set).await? {
            let real_body = UnlockBatchRequestBody {
                mq_set: share.real.clone(),
                ..body.clone()
            };
            if let Err(e) =
                at_broker(ctx, rc::UNLOCK_BATCH_MQ, &share.topic, &broker, &real_body).await
            {
                tracing::info!(%broker, group = %body.consumer_group, "unlock failed: {e}");
            }
            self.forget(conn_id, &body, &broker, &share.real);
        }
        Ok(ctx.reply(req, response_code::SUCCESS, None))
    }

    fn track(
        &self,
        conn_id: u64,
        body: &LockBatchRequestBody,
        holding: BTreeMap<String, (String, Vec<MessageQueue>)>,
    ) {
        let mut held = self.held.lock();
        if !held.contains_key(&conn_id) && held.len() >= MAX_TRACKED {
            return;
        }
        let key = (body.consumer_group.clone(), body.client_id.clone());
        let mine = held.entry(conn_id).or_default().entry(key).or_default();
        let mut fresh = self.fresh.lock();
        for (broker, (topic, queues)) in holding {
            let (_, known) = mine.entry(broker).or_insert_with(|| (topic, Vec::new()));
            for q in queues {
                if !known.contains(&q) {
                    if fresh.len() < MAX_TRACKED {
                        fresh.insert((conn_id, body.consumer_group.clone(), q.clone()));
                    }
                    known.push(q);
                }
            }
        }
    }

    fn forget(
        &self,
        conn_id: u64,
        body: &LockBatchRequestBody,
        broker: &str,
        real: &[MessageQueue],
    ) {
        let mut held = self.held.lock();
        let key = (body.consumer_group.clone(), body.client_id.clone());
        if let Some(mine) = held.get_mut(&conn_id).and_then(|h| h.get_mut(&key)) {
            if let Some((_, known)) = mine.get_mut(broker) {
                known.retain(|q| !real.contains(q));
            }
        }
        let mut fresh = self.fresh.lock();
        for q in real {
            fresh.remove(&(conn_id, body.consumer_group.clone(), q.clone()));
        }
    }

    /// Whether a client on `conn_id` holds `group`'s lock on the real queue `q` (as far as this
    /// sidecar relayed it).
    pub fn holds(&self, conn_id: u64, group: &str, q: &MessageQueue) -> bool {
        let held = self.held.lock();
        held.get(&conn_id).is_some_and(|h| {
            h.iter().any(|((g, _), brokers)| {
                g == group
                    && brokers
                        .get(&q.broker_name)
                        .is_some_and(|(_, qs)| qs.contains(q))
            })
        })
    }

    /// Whether `q` was newly locked by `conn_id`'s client and not pulled since (then forgets it).
    pub fn take_fresh(&self, conn_id: u64, group: &str, q: &MessageQueue) -> bool {
        self.fresh
            .lock()
            .remove(&(conn_id, group.to_owned(), q.clone()))
    }

    /// A downstream connection closed: release what its clients held (on a task), so another
    /// consumer of the group takes those queues at its next re-lock instead of after the
    /// broker's expiry.
    pub fn release(&self, ctx: Arc<Context>, conn_id: u64) {
        self.fresh.lock().retain(|(c, _, _)| *c != conn_id);
        let Some(held) = self.held.lock().remove(&conn_id) else {
            return;
        };
        self.tasks
            .spawn(async move { unlock_all(&ctx, held).await });
    }

    /// Waits for the releases in flight (each bounded by the request timeout).
    pub async fn close(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn unlock_all(ctx: &Context, held: Held) {
    for ((group, client), brokers) in held {
        for (broker, (topic, queues)) in brokers {
            if queues.is_empty() {
                continue;
            }
            let body = UnlockBatchRequestBody {
                client_id: client.clone(),
                consumer_group: group.clone(),
                mq_set: queues,
                only_this_broker: false,
            };
            match at_broker(ctx, rc::UNLOCK_BATCH_MQ, &topic, &broker, &body).await {
                Ok(_) => {
                    tracing::info!(%group, %client, %broker, "released a closed connection's queue locks")
                }
                Err(e) => tracing::info!(
                    %group, %broker,
                    "releasing queue locks failed (they expire at the broker): {e}"
                ),
            }
        }
    }
}
