//! The bundled broker node: a single-process RocketMQ broker that a 4.x SDK and a Pop client can
//! use directly (design.md section 5).
//!
//! * [`store`]: commit log, consume queues, consumer offsets, pop checkpoints, flush and recovery.
//! * [`processor`]: one function per request code.
//! * [`pop`]: POP / ACK / CHANGE_INVISIBLETIME and the revive service.
//! * [`pop_order`], [`order_info`]: orderly Pop (`order=true`): one consumer of a group at a time
//!   per queue, the same offsets again after the invisible time, persisted order state.
//! * [`admin`], [`runtime`]: what tools ask (view / query messages, topic and consume stats,
//!   consumer connections, calls to consumers, runtime info, topic config).
//! * [`assignment`]: QUERY_ASSIGNMENT / SET_MESSAGE_REQUEST_MODE (5.x server-side balancing).
//! * [`schedule`]: delay levels (send-back retries, `DELAY` messages).
//! * [`topics`], [`clients`], [`long_poll`], [`register`]: topic table, client table, parked
//!   requests, registration with a nameserver.
//! * [`acl`]: `--acl FILE` (Apache's `plain_acl.yml`), checked before every processor, reloaded
//!   on change.
//! * [`metrics`]: what the broker counts (the embedding process installs the recorder).
//!
//! Lifecycle ([`BrokerHandle::shutdown`]): the listener stops accepting and parked long polls
//! are answered at once; the broker unregisters from its nameserver while requests in flight
//! finish, up to [`BrokerConfig::drain_timeout`]; then connections close (what still runs is
//! cancelled), the background tasks (client expiry, delay-level delivery, revive,
//! registration) are awaited through one [`Drain`], and the store is flushed and closed.
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod assignment;
pub mod clients;
pub mod locks;
pub mod long_poll;
pub mod metrics;
pub mod order_info;
pub mod pop;
pub mod pop_order;
pub mod processor;
pub mod register;
pub mod runtime;
pub mod schedule;
pub mod store;
pub mod topic_admin;
pub mod topics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::codec::codes::request_code;
use rocketmesh_filters::codec::headers::NotifyConsumerIdsChangedRequestHeader;
use rocketmesh_filters::codec::message::MessageExt;
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use tokio_util::sync::CancellationToken;

use self::clients::ClientTable;
use self::metrics::BrokerMetrics;
use self::store::{FlushMode, GetResult, MessageStore, PutResult, StoreConfig, StoreError};
use self::topics::{TopicError, TopicTable};
use rocketmesh_remoting::advertise::{advertised, vip_port, AdvertiseError};
use rocketmesh_remoting::tls::{ClientTls, ServerTls};
use rocketmesh_remoting::{Drain, Server, ServerConfig};

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address written into routes and REGISTER_BROKER (`HOST:PORT`); None = the bound listen
    /// address, or `pod_ip` with the bound port when the listen address is unspecified
    /// ([`rocketmesh_remoting::advertise::advertised`]). After [`start`], always set.
    pub advertise: Option<String>,
    /// The pod's IP (the binary reads `POD_IP`): advertised when listening on every address.
    pub pod_ip: Option<String>,
    /// Also accept on the listen port minus 2, where 4.x clients with `vipChannelEnabled`
    /// connect (Apache's broker does by default). Not opened for port 0 (an ephemeral port has
    /// no agreed pair).
    pub vip_channel: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Sync (group commit, answer after fsync) or async flushing.
    pub sync_flush: bool,
    /// Broker name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Nameserver to register with (`host:port`, `ip:port` or `[v6]:port`; a name is resolved at
    /// every connect); standalone without.
    pub namesrv: Option<String>,
    /// Topics served read-only.
    pub read_only_topics: Vec<String>,
    /// Whether sends may create topics.
    pub auto_create_topics: bool,
    /// Largest message body.
    pub max_message_size: usize,
    /// Most client connections.
    pub max_connections: usize,
    /// Most requests in flight per connection.
    pub max_in_flight: usize,
    /// Encoding of responses.
    pub response_encoding: ResponseEncoding,
    /// How often to re-register with the nameserver.
    pub register_interval: Duration,
    /// On shutdown: how long requests in flight may take before connections are closed.
    pub drain_timeout: Duration,
    /// An orderly consumer's queue lock expires this long after its last renewal (Apache's
    /// `REBALANCE_LOCK_MAX_LIVE_TIME`: 60 s; consumers renew every 20 s).
    pub lock_expiry: Duration,
    /// How long GET_CONSUMER_RUNNING_INFO / CONSUME_MESSAGE_DIRECTLY wait for the consumer
    /// (Apache: 10 s) before answering CONSUME_MSG_TIMEOUT.
    pub call_consumer_timeout: Duration,
    /// Most entries of the message index behind QUERY_MESSAGE (see [`store::index`]).
    pub index_max_entries: usize,
    /// Apache `plain_acl.yml` enforced on every request; None = no ACL.
    pub acl: Option<PathBuf>,
    /// How often the ACL file is checked for changes.
    pub acl_reload_interval: Duration,
    /// TLS of the Remoting listeners (listen and VIP); None = plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// TLS towards the nameserver (registration); None = plaintext.
    pub namesrv_tls: Option<Arc<ClientTls>>,
}

impl BrokerConfig {
    /// Defaults for a broker listening on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            advertise: None,
            pod_ip: None,
            vip_channel: true,
            data_dir,
            sync_flush: false,
            name: "broker-a".into(),
            cluster: "DefaultCluster".into(),
            namesrv: None,
            read_only_topics: Vec::new(),
            auto_create_topics: true,
            max_message_size: 4 * 1024 * 1024,
            max_connections: 10_000,
            max_in_flight: 1024,
            response_encoding: ResponseEncoding::Json,
            register_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            lock_expiry: Duration::from_secs(60),
            call_consumer_timeout: Duration::from_secs(10),
            index_max_entries: store::index::DEFAULT_INDEX_MAX_ENTRIES,
            acl: None,
            acl_reload_interval: Duration::from_secs(1),
            tls: None,
            namesrv_tls: None,
        }
    }
}

/// Shared state of a running broker.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: BrokerConfig,
    /// The address in message ids (the advertised one, resolved once at start).
    pub(crate) store_host: SocketAddr,
    pub(crate) store: Arc<MessageStore>,
    pub(crate) topics: TopicTable,
    pub(crate) clients: ClientTable,
    pub(crate) modes: assignment::RequestModes,
    pub(crate) locks: locks::QueueLocks,
    pub(crate) pop: pop::PopState,
    /// Orderly-pop batches per (group, topic, queue), persisted.
    pub(crate) pop_order: Arc<order_info::OrderTable>,
    pub(crate) metrics: BrokerMetrics,
    /// Boot time and sampled rates (GET_BROKER_RUNTIME_INFO).
    pub(crate) runtime: runtime::RuntimeStats,
    /// `--acl`: checked before every request.
    pub(crate) acl: Option<acl::BrokerAcl>,
    /// Fires when the drain begins: parked long polls answer at once.
    pub(crate) draining: CancellationToken,
    /// Whether a registration with the nameserver has succeeded since start.
    pub(crate) registered: tokio::sync::watch::Sender<bool>,
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    /// The bound address.
    pub addr: SocketAddr,
    /// The VIP channel's bound address (listen port - 2), when open.
    pub vip_addr: Option<SocketAddr>,
    /// The address clients are told.
    pub advertised: String,
    server: Server,
    vip: Option<Server>,
    background: Drain,
    broker: Arc<Broker>,
}

impl BrokerHandle {
    /// PULL and POP requests parked on `topic` now, waiting for a message (introspection: tests
    /// wait on this instead of sleeping).
    pub fn parked(&self, topic: &str) -> usize {
        self.broker.store.arrivals().parked(topic)
    }

    /// Pop checkpoints not yet fully acked: what revive would still bring back.
    pub fn pop_checkpoints(&self) -> usize {
        self.broker.store.pop().len()
    }

    /// Queues with an orderly-pop batch not yet fully acked.
    pub fn orderly_batches(&self) -> usize {
        self.broker.pop_order.len()
    }

    /// Completes once a registration with the nameserver has succeeded (at once for a
    /// standalone broker). Until then clients cannot find this broker through routes.
    pub fn registered_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let standalone = self.broker.config.namesrv.is_none();
        let mut rx = self.broker.registered.subscribe();
        async move {
            if !standalone {
                // An error means the broker is gone: nothing left to wait for.
                let _ = rx.wait_for(|r| *r).await;
            }
        }
    }

    /// Requests taken and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.server.in_flight() + self.vip.as_ref().map_or(0, Server::in_flight)
    }

    /// Requests the ACL refused, and successful / failed reloads of its file (zeros without
    /// `--acl`).
    pub fn acl_stats(&self) -> (u64, u64, u64) {
        self.broker.acl.as_ref().map_or((0, 0, 0), |a| {
            (a.denied(), a.file.reloads(), a.file.failures())
        })
    }

    /// The ACL file in use as JSON, secrets redacted (None without `--acl`).
    pub fn acl_dump(&self) -> Option<serde_json::Value> {
        self.broker
            .acl
            .as_ref()
            .map(|a| a.file.current().redacted_json())
    }

    /// A `'static` view of [`acl_dump`](Self::acl_dump) for an admin server's `/config_dump`:
    /// the accounts as currently loaded, secrets redacted (`null` without `--acl`).
    pub fn acl_dumper(&self) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let file = self.broker.acl.as_ref().map(|a| a.file.clone());
        move || {
            file.as_ref()
                .map_or(serde_json::Value::Null, |f| f.current().redacted_json())
        }
    }

    /// The store's counters.
    pub fn store_stats(&self) -> store::StoreStats {
        self.broker.store.stats()
    }

    /// First step of the shutdown, also taken by [`BrokerHandle::shutdown`]: the listener
    /// closes, parked long polls answer now, background tasks start no new work.
    pub fn begin_drain(&self) {
        self.server.stop_accepting();
        if let Some(v) = &self.vip {
            v.stop_accepting();
        }
        self.background.begin();
    }

    /// Graceful shutdown (see the crate docs), bounded by [`BrokerConfig::drain_timeout`] plus
    /// the store's final flush.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.broker.config.drain_timeout;
        self.begin_drain();
        let unregister = async {
            if let Some(namesrv) = self.broker.config.namesrv.as_deref() {
                let bounded =
                    tokio::time::timeout_at(deadline, register::unregister(&self.broker, namesrv));
                if bounded.await.is_err() {
                    tracing::warn!(%namesrv, "unregister did not finish before the drain deadline");
                }
            }
        };
        let answered = async {
            let vip = async {
                if let Some(v) = &self.vip {
                    v.drained().await;
                }
            };
            let both = futures_util::future::join(self.server.drained(), vip);
            if tokio::time::timeout_at(deadline, both).await.is_err() {
                let left = self.in_flight();
                tracing::warn!(left, "drain deadline passed with requests in flight");
            }
        };
        futures_util::future::join(unregister, answered).await;
        self.server.close().await;
        if let Some(v) = self.vip {
            v.close().await;
        }
        self.background.finish().await;
        // Every task holding the store is gone: flush and close it off the runtime's workers.
        let store = self.broker.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.shutdown()).await;
        match closed {
            Ok(Ok(())) => tracing::info!(name = %self.broker.config.name, "broker stopped"),
            Ok(Err(e)) => tracing::error!("store shutdown failed: {e}"),
            Err(e) => tracing::error!("store shutdown task failed: {e}"),
        }
    }
}

/// Why a broker node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "binding the VIP channel {addr} (listen port - 2, where 4.x clients with \
         vipChannelEnabled connect; turn it off with --vip-channel false): {source}"
    )]
    Vip {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
    #[error("opening the store in {dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error("topic table: {0}")]
    Topics(#[from] TopicError),
    #[error("message request modes: {0}")]
    Modes(#[from] assignment::ModesError),
    #[error(transparent)]
    Acl(#[from] rocketmesh_remoting::reload::ReloadError),
}

/// Opens the store and starts serving.
pub async fn start(mut config: BrokerConfig) -> Result<BrokerHandle, StartError> {
    let bind_err = |addr, source| StartError::Bind { addr, source };
    // Checked before binding: a broker that could not tell clients where it is never listens.
    advertised(
        config.advertise.as_deref(),
        config.listen,
        config.pod_ip.as_deref(),
    )?;
    // The accept queue sized from the connection limit (capped by somaxconn).
    let listener = rocketmesh_remoting::bind(config.listen, config.max_connections)
        .map_err(|e| bind_err(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| bind_err(config.listen, e))?;
    let advertised = advertised(config.advertise.as_deref(), addr, config.pod_ip.as_deref())?;
    let store_host = store_host(&advertised, addr).await;
    config.advertise = Some(advertised.clone());
    let vip_listener = match vip_port(config.listen.port()).filter(|_| config.vip_channel) {
        Some(port) => {
            let vip = SocketAddr::new(config.listen.ip(), port);
            let l = rocketmesh_remoting::bind(vip, config.max_connections)
                .map_err(|source| StartError::Vip { addr: vip, source })?;
            Some(l)
        }
        None => None,
    };
    config.listen = addr;
    let metrics = BrokerMetrics::register(&config.name);
    let store = MessageStore::open(StoreConfig {
        metrics: metrics.store.clone(),
        flush_mode: if config.sync_flush {
            FlushMode::Sync
        } else {
            FlushMode::default()
        },
        max_message_size: config.max_message_size,
        index_max_entries: config.index_max_entries,
        ..StoreConfig::new(config.data_dir.clone())
    })
    .map_err(|source| StartError::Store {
        dir: config.data_dir.clone(),
        source,
    })?;
    let topics = TopicTable::open(
        &config.data_dir,
        config.auto_create_topics,
        config.read_only_topics.clone(),
    )?;
    for t in &config.read_only_topics {
        topics.ensure(t, 4)?;
    }
    let modes = assignment::RequestModes::open(&config.data_dir)?;
    let pop_order =
        order_info::OrderTable::open(&config.data_dir).map_err(|source| StartError::Store {
            dir: config.data_dir.clone(),
            source,
        })?;
    let acl = config
        .acl
        .as_deref()
        .map(acl::BrokerAcl::load)
        .transpose()?;
    let background = Drain::new();
    let broker = Arc::new(Broker {
        acl,
        store_host,
        pop: pop::PopState::default(),
        pop_order: Arc::new(pop_order),
        config,
        store,
        topics,
        clients: ClientTable::new(),
        modes,
        locks: locks::QueueLocks::default(),
        metrics,
        runtime: runtime::RuntimeStats::new(),
        draining: background.draining_token(),
        registered: tokio::sync::watch::Sender::new(false),
    });
    let server_config = ServerConfig {
        max_connections: broker.config.max_connections,
        max_in_flight: broker.config.max_in_flight,
        response_encoding: broker.config.response_encoding,
        ..ServerConfig::default()
    };
    let handler = Arc::new(processor::BrokerHandler {
        broker: broker.clone(),
    });
    let vip_addr = vip_listener.as_ref().and_then(|l| l.local_addr().ok());
    let tls = broker
        .config
        .tls
        .clone()
        .unwrap_or_else(|| ServerTls::disabled("broker"));
    let vip =
        vip_listener.map(|l| Server::start_tls(l, handler.clone(), server_config, tls.clone()));
    let server = Server::start_tls(listener, handler, server_config, tls);
    // Background loops stop starting work when the drain begins; Drain::finish awaits them.
    let stop = background.draining_token();
    background.spawn(expire_clients(broker.clone(), stop.clone()));
    background.spawn(schedule::run(broker.clone(), stop.clone()));
    background.spawn(pop::revive(broker.clone(), stop.clone()));
    background.spawn(runtime::sample(broker.clone(), stop.clone()));
    if let Some(acl) = &broker.acl {
        let interval = broker.config.acl_reload_interval;
        background.spawn(acl.file.clone().run(interval, stop.clone()));
    }
    if let Some(namesrv) = broker.config.namesrv.clone() {
        background.spawn(register::run(broker.clone(), namesrv, stop));
    }
    tracing::info!(%addr, ?vip_addr, %advertised, name = %broker.config.name, "broker serving");
    Ok(BrokerHandle {
        addr,
        vip_addr,
        advertised,
        server,
        vip,
        background,
        broker,
    })
}

/// The address message ids carry for `advertised`: the address itself, or what its name
/// resolves to now (ids hold an IP), or the bound address when it does not resolve.
async fn store_host(advertised: &str, bound: SocketAddr) -> SocketAddr {
    if let Ok(a) = advertised.parse() {
        return a;
    }
    match rocketmesh_remoting::client::resolve(advertised, Duration::from_secs(5)).await {
        Ok(addrs) => addrs[0],
        Err(e) => {
            tracing::warn!(%bound, "message ids carry the bound address: {e}");
            bound
        }
    }
}

async fn expire_clients(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let changed = broker.clients.expire(clients::CLIENT_EXPIRY);
        broker.notify_groups(&changed);
    }
}

impl Broker {
    /// Tells every member of each group that membership changed, so they rebalance now.
    pub(crate) fn notify_groups(&self, groups: &[String]) {
        for group in groups {
            let header = NotifyConsumerIdsChangedRequestHeader {
                consumer_group: group.clone(),
            };
            for conn in self.clients.consumer_connections(group) {
                let cmd = RemotingCommand::request_with_header(
                    request_code::NOTIFY_CONSUMER_IDS_CHANGED,
                    &header,
                );
                if !conn.notify(cmd) {
                    tracing::debug!(%group, peer = %conn.peer(), "consumer ids notification dropped");
                }
            }
        }
    }

    /// Appends messages (one lock hold for a batch); in sync-flush mode returns only after the
    /// fsync that covers them. The store wakes parked pulls and pops.
    pub(crate) async fn put(
        &self,
        messages: Vec<MessageExt>,
    ) -> Result<Vec<PutResult>, StoreError> {
        // On the calling worker: an append is a few page-cache writes under the store lock
        // (microseconds), far less than handing each send to a blocking-pool thread and back,
        // which cost two thread wake-ups per send and grew the pool to one thread per send in
        // flight. Durability waits (sync flush) stay asynchronous below.
        let results = self.store.put_batch(messages)?;
        self.metrics
            .messages_appended
            .increment(results.len() as u64);
        self.metrics
            .appended_bytes
            .increment(results.iter().map(|r| u64::from(r.size)).sum());
        if self.config.sync_flush {
            if let Some(end) = results.iter().map(|r| r.end_offset()).max() {
                self.store.wait_durable(end).await?;
            }
        }
        Ok(results)
    }

    /// Reads from a consume queue, filtered by tag hash (`None` = all).
    pub(crate) fn get(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        max_count: usize,
        max_bytes: usize,
        tag_codes: Option<&[i64]>,
    ) -> Result<GetResult, StoreError> {
        self.store
            .get_messages(topic, queue_id, offset, max_count, max_bytes, |code| {
                tag_codes.is_none_or(|codes| codes.contains(&code))
            })
    }

    pub(crate) fn lookup(&self, phys_offset: i64) -> Result<MessageExt, StoreError> {
        self.store.lookup_by_phys_offset(phys_offset)
    }

    pub(crate) fn max_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.store.max_offset(topic, queue_id)
    }

    pub(crate) fn min_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.store.min_offset(topic, queue_id)
    }

    pub(crate) fn search_offset(
        &self,
        topic: &str,
        queue_id: i32,
        ts: i64,
    ) -> Result<i64, StoreError> {
        self.store.search_offset_by_timestamp(topic, queue_id, ts)
    }

    pub(crate) fn offsets_commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) {
        match self.store.offsets().commit(group, topic, queue_id, offset) {
            Ok(_) => self.metrics.offset_commits.increment(1),
            Err(e) => tracing::warn!(%group, %topic, queue_id, "offset not stored: {e}"),
        }
    }

    pub(crate) fn offsets_query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.store.offsets().query(group, topic, queue_id)
    }

    /// Stores a message for delivery after `level`'s delay (see [`schedule`]).
    pub(crate) async fn put_delayed(
        &self,
        msg: MessageExt,
        level: i32,
    ) -> Result<Vec<PutResult>, StoreError> {
        let wrapped = schedule::wrap(msg, level);
        self.put(vec![wrapped]).await
    }
}
