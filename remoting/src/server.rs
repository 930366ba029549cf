//! A Remoting server: accept loop, per-connection reader/writer tasks, bounded concurrency.
//!
//! * At most `max_connections` connections: the accept loop waits for a free slot.
//! * At most `max_in_flight` requests per connection are handled at once; past that the reader
//!   stops reading, so TCP backpressure reaches the client instead of memory growing here.
//! * Responses are written in completion order (Remoting matches them by opaque); the writer
//!   batches whatever is queued into one write.
//! * A frame with a malformed header is answered with SYSTEM_ERROR naming the problem when its
//!   opaque can be recovered, and the connection reads on; when it cannot (nobody to answer), and
//!   when the stream lost its framing, the connection is closed. Every decode failure is reported
//!   to [`Handler::on_decode_error`] for the handler's counters.
//! * The server can also send requests to a connected client ([`Connection::notify`],
//!   [`Connection::invoke`]), as a broker does for NOTIFY_CONSUMER_IDS_CHANGED.
//!
//! Lifecycle ([`Server`]): every task (accept loop, connection readers and writers, request
//! tasks, delayed deliveries) runs on one `TaskTracker`. Stopping is three steps the owner
//! sequences: [`Server::stop_accepting`] (the listener closes), [`Server::drained`] (every
//! request taken so far has been answered, inline ones included), [`Server::close`] (connections
//! close, requests still running are cancelled, and it returns once every task has ended).

use parking_lot::Mutex;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rocketmesh_filters::codec::codes::response_code;
use rocketmesh_filters::codec::{
    CodecError, FrameCodec, FrameLimits, RemotingCodec, RemotingCommand, ResponseEncoding,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gate::Gate;
use super::log_budget::{warn_limited, LogBudget};
use super::tls::{ServerTls, Stream};

/// One budget for every warning a client can provoke, process-wide: a flood from many
/// connections is limited as well as one from a single connection.
static PEER_FAULTS: LogBudget = LogBudget::new();

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most requests handled at once per connection.
    pub max_in_flight: usize,
    /// Frame limits for decoding.
    pub limits: FrameLimits,
    /// Encoding of the error responses the server itself produces.
    pub response_encoding: ResponseEncoding,
    /// A frame must be complete within this long of its first byte arriving (checked every
    /// half of it); a connection stuck in a partial frame is closed.
    pub frame_timeout: Duration,
    /// A connection with no frame and no request in flight for this long is closed (SDKs send
    /// a heartbeat every 30 s); `None` keeps idle connections.
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_in_flight: 1024,
            limits: FrameLimits::default(),
            response_encoding: ResponseEncoding::Json,
            frame_timeout: Duration::from_secs(30),
            // Four missed SDK heartbeats, as long as Apache's broker waits
            // (channelMaxIdleTimeSeconds = 120).
            idle_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// Why the server closed a connection on a timer ([`Handler::on_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTimeout {
    /// A frame did not complete within [`ServerConfig::frame_timeout`].
    PartialFrame,
    /// Nothing arrived and nothing was in flight for [`ServerConfig::idle_timeout`].
    Idle,
}

/// What [`Handler::admit`] decided for an accepted connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it as Remoting. `original_dst` is where the client meant to connect when a
    /// redirect brought it here; `label` is the handler's name for it (e.g. the broker a
    /// transparently intercepted connection was meant for). Both readable on [`Connection`].
    Serve {
        stream: TcpStream,
        original_dst: Option<SocketAddr>,
        label: Option<Arc<str>>,
    },
    /// The handler took the stream (relayed it elsewhere, or closed it): not served here.
    Taken,
}

/// What a server does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Called for every accepted connection before anything is read from it: serve it (the
    /// default) or take it. Must not block.
    fn admit(self: &Arc<Self>, stream: TcpStream, _peer: SocketAddr) -> Admission {
        Admission::Serve {
            stream,
            original_dst: None,
            label: None,
        }
    }

    /// Handles one request; `None` means no response (oneway requests' responses are dropped
    /// anyway).
    fn handle(
        self: &Arc<Self>,
        request: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> impl Future<Output = Option<RemotingCommand>> + Send;

    /// Takes `request` without a task of its own when that is possible right now, e.g. by
    /// queuing it upstream with a callback that answers through [`Connection::deliver`]; hands
    /// request and slot back otherwise (the default), and the request goes to
    /// [`Handler::handle`] on a task. Must not block.
    #[allow(clippy::result_large_err)]
    fn try_handle_inline(
        self: &Arc<Self>,
        request: RemotingCommand,
        _conn: &Arc<Connection>,
        slot: RequestSlot,
    ) -> Result<(), (RemotingCommand, RequestSlot)> {
        Err((request, slot))
    }

    /// Called for every frame that could not be decoded: a malformed header (answered with
    /// SYSTEM_ERROR when its opaque could be recovered, else the connection is closed) or a
    /// stream that lost its framing (closed). For the handler's counters.
    fn on_decode_error(&self, _conn: &Arc<Connection>, _error: &CodecError) {}

    /// Called when the server closes a connection on a timer, for the handler's counters.
    fn on_timeout(&self, _conn: &Arc<Connection>, _why: ConnTimeout) {}

    /// Called once when a connection opens, before its first request.
    fn on_open(&self, _conn: &Arc<Connection>) {}

    /// Called once when a connection ends.
    fn on_close(&self, _conn: &Arc<Connection>) {}
}

use super::connection::CONNECTION_IDS;
pub use super::connection::{Connection, RequestError, RequestSlot, MAX_PENDING_REQUESTS};

/// Serves `listener` until `shutdown` fires, which closes every connection; returns once every
/// task of the server has ended.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    serve_until(listener, handler, config, shutdown.clone(), shutdown).await
}

/// Serves `listener`: accepts until `stop_accepting` fires (the listener is closed then), and
/// keeps the accepted connections until `close` fires; returns once every task has ended.
/// Between the two a caller can drain: let in-flight requests finish while no new connection
/// comes in ([`Server`] gives the drain a condition to wait on).
pub async fn serve_until<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    stop_accepting: CancellationToken,
    close: CancellationToken,
) {
    let server = Server::start(listener, handler, config);
    tokio::select! {
        () = stop_accepting.cancelled() => server.stop_accepting(),
        () = close.cancelled() => {}
    }
    close.cancelled().await;
    server.close().await;
}

/// A running server (see the module docs for its lifecycle).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop_accepting: CancellationToken,
    close: CancellationToken,
    tasks: TaskTracker,
    requests: Arc<Gate>,
}

impl Server {
    /// Starts accepting on `listener` (inside a tokio runtime), plaintext only.
    pub fn start<H: Handler>(listener: TcpListener, handler: Arc<H>, config: ServerConfig) -> Self {
        Self::start_tls(listener, handler, config, ServerTls::disabled("remoting"))
    }

    /// Starts accepting on `listener` with a TLS policy ([`ServerTls`]): after
    /// [`Handler::admit`], each connection's handshake (if any) runs on its own task, bounded
    /// by the policy's timeout and holding one of the `max_connections` slots.
    pub fn start_tls<H: Handler>(
        listener: TcpListener,
        handler: Arc<H>,
        config: ServerConfig,
        tls: Arc<ServerTls>,
    ) -> Self {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let server = Server {
            local_addr,
            stop_accepting: CancellationToken::new(),
            close: CancellationToken::new(),
            tasks: TaskTracker::new(),
            requests: Gate::new(usize::MAX),
        };
        let shared = Shared {
            config,
            close: server.close.clone(),
            tasks: server.tasks.clone(),
            requests: server.requests.clone(),
            tls,
        };
        server.tasks.spawn(accept_loop(
            listener,
            handler,
            shared,
            server.stop_accepting.clone(),
        ));
        server
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listener; accepted connections are served on.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Requests taken and not answered yet, on every connection.
    pub fn in_flight(&self) -> usize {
        self.requests.taken()
    }

    /// Resolves once no request is in flight (the caller bounds the wait).
    pub async fn drained(&self) {
        self.requests.drained().await
    }

    /// Closes every connection (requests still running are cancelled; their clients see the
    /// connection end) and returns once every task of the server has ended.
    pub async fn close(self) {
        self.stop_accepting.cancel();
        self.close.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What every connection task of a server shares.
#[derive(Clone)]
struct Shared {
    config: ServerConfig,
    close: CancellationToken,
    tasks: TaskTracker,
    requests: Arc<Gate>,
    tls: Arc<ServerTls>,
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shared: Shared,
    stop_accepting: CancellationToken,
) {
    let shutdown = stop_accepting;
    let slots = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let mut accept_backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                tracing::warn!("accept failed: {e}; retrying in {accept_backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(accept_backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (stream, original_dst, label) = match handler.admit(stream, peer) {
            Admission::Serve {
                stream,
                original_dst,
                label,
            } => (stream, original_dst, label),
            Admission::Taken => continue,
        };
        let handler = handler.clone();
        let shared2 = shared.clone();
        let admitted = Admitted {
            stream,
            peer,
            original_dst,
            label,
        };
        shared.tasks.spawn(async move {
            let Admitted {
                stream,
                peer,
                original_dst,
                label,
            } = admitted;
            // The handshake (or the permissive mode's first byte) is awaited here, under the
            // connection's slot and bounded by the handshake timeout; a forced close ends it.
            let accepted = tokio::select! {
                a = shared2.tls.accept(stream) => a,
                () = shared2.close.cancelled() => return,
            };
            match accepted {
                Ok(stream) => {
                    let admitted = Served {
                        stream,
                        peer,
                        original_dst,
                        label,
                    };
                    serve_connection(admitted, handler, shared2).await;
                }
                Err(e) => {
                    warn_limited!(PEER_FAULTS, %peer, listener = shared2.tls.name(), "closing connection: {e}");
                }
            }
            drop(permit);
        });
    }
}

/// An accepted connection and what [`Handler::admit`] said of it.
struct Admitted {
    stream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    label: Option<Arc<str>>,
}

/// An admitted connection past its TLS handshake (if any).
struct Served {
    stream: Stream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    label: Option<Arc<str>>,
}

async fn serve_connection<H: Handler>(admitted: Served, handler: Arc<H>, shared: Shared) {
    let Served {
        stream,
        peer,
        original_dst,
        label,
    } = admitted;
    let config = shared.config;
    let closed = shared.close.child_token();
    let _ = stream.tcp().set_nodelay(true);
    let local = stream.tcp().local_addr().unwrap_or(peer);
    let tls = stream.is_tls();
    let (read, write) = stream.into_split();
    let (out, out_rx) = mpsc::channel::<Box<RemotingCommand>>(config.max_in_flight.max(16));
    let conn = Arc::new(Connection {
        id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
        peer,
        local,
        original_dst,
        label,
        tls,
        out,
        closed: closed.clone(),
        next_opaque: AtomicI32::new(1),
        pending: Mutex::default(),
        tasks: shared.tasks.clone(),
    });
    tracing::debug!(conn = conn.id, %peer, "connection opened");
    handler.on_open(&conn);

    let writer = shared.tasks.spawn({
        let closed = closed.clone();
        async move {
            if let Some(e) = super::write_loop(write, out_rx, config.limits, closed).await {
                tracing::debug!(%peer, "write failed: {e}");
            }
        }
    });

    let in_flight = Gate::new(config.max_in_flight);
    // Raw frames: FramedRead ends the stream after any decoder error, but a bad header in a
    // well-delimited frame is recoverable, so headers are parsed here instead.
    let mut frames =
        FramedRead::with_capacity(read, FrameCodec::new(config.limits), IDLE_READ_BUFFER);
    // One registration for the connection's life, not one per frame.
    let mut stop = std::pin::pin!(closed.cancelled());
    let mut watch = Watchdog::new(&config);
    loop {
        // Frames first: `stop` and the watchdog are then looked at whenever the socket has
        // nothing more to read (every read batch), without a lock per frame (a cancellation
        // check takes one).
        let next = tokio::select! {
            biased;
            f = frames.next() => f,
            _ = watch.tick.tick() => {
                match watch.check(&config, frames.read_buffer(), in_flight.taken()) {
                    Verdict::Keep { idle } => {
                        if idle && frames.read_buffer().capacity() > IDLE_READ_BUFFER {
                            // Idle: give the large read buffer back (it is grown again once
                            // frames come in quick succession).
                            *frames.read_buffer_mut() =
                                bytes::BytesMut::with_capacity(IDLE_READ_BUFFER);
                        }
                        continue;
                    }
                    Verdict::Close(why) => {
                        handler.on_timeout(&conn, why);
                        tracing::debug!(%peer, ?why, "closing connection on a timer");
                        break;
                    }
                }
            }
            () = &mut stop => break,
        };
        watch.frames += 1;
        // A busy connection (a second frame within one watchdog period) reads into a large
        // buffer, so one `recv` takes many frames; a connection that only heartbeats keeps a
        // small one. The end of the stream is no frame: counting it grew the buffer of every
        // connection closed soon after a request (10,000 clients leaving at once took the
        // sidecar from 109 MiB to 894 MiB).
        if next.is_some()
            && watch.frames - watch.frames_at_tick >= 2
            && frames.read_buffer().capacity() < super::READ_BUFFER
        {
            frames.read_buffer_mut().reserve(super::READ_BUFFER);
        }
        let next = next.map(|r| r.and_then(RemotingCodec::parse_frame));
        match next {
            Some(Ok(cmd)) if cmd.is_response() => {
                let waiter = conn.pending.lock().remove(&cmd.opaque());
                if let Some(tx) = waiter {
                    let _ = tx.send(cmd);
                }
            }
            Some(Ok(request)) => {
                let permit = match in_flight.try_pass() {
                    Some(p) => p,
                    // All slots taken: stop reading until one frees (TCP backpressure).
                    None => tokio::select! {
                        p = in_flight.pass() => p,
                        () = &mut stop => break,
                    },
                };
                let Some(counted) = shared.requests.try_pass() else {
                    // usize::MAX requests at once: cannot happen; refuse rather than panic.
                    break;
                };
                let slot = RequestSlot {
                    _conn: permit,
                    _server: counted,
                };
                let (request, slot) = match handler.try_handle_inline(request, &conn, slot) {
                    Ok(()) => continue,
                    Err(back) => back,
                };
                let handler = handler.clone();
                let conn = conn.clone();
                let cancelled = closed.clone();
                shared.tasks.spawn(async move {
                    let oneway = request.is_oneway();
                    // A forced close cancels the request: its client sees the connection end.
                    let response = tokio::select! {
                        r = handler.handle(request, &conn) => r,
                        () = cancelled.cancelled() => None,
                    };
                    if let (Some(resp), false) = (response, oneway) {
                        tokio::select! {
                            _ = conn.out.send(Box::new(resp)) => {}
                            () = cancelled.cancelled() => {}
                        }
                    }
                    drop(slot);
                });
            }
            Some(Err(e)) => {
                handler.on_decode_error(&conn, &e);
                match e {
                    CodecError::MalformedHeader {
                        kind,
                        opaque: Some(opaque),
                        reason,
                    } => {
                        warn_limited!(PEER_FAULTS, %peer, "malformed {kind} header: {reason}");
                        let resp = RemotingCommand::request(0)
                            .with_opaque(opaque)
                            .response_to(response_code::SYSTEM_ERROR, config.response_encoding)
                            .with_remark(format!("malformed {kind} header: {reason}"));
                        let _ = conn.out.try_send(Box::new(resp));
                    }
                    CodecError::MalformedHeader {
                        kind,
                        opaque: None,
                        reason,
                    } => {
                        // Nobody can be answered: the client would wait for its own timeout on
                        // a connection that looks alive. Closing tells it at once.
                        warn_limited!(PEER_FAULTS, %peer, "closing connection: malformed {kind} header without a readable opaque: {reason}");
                        break;
                    }
                    e => {
                        if watch.frames == 1
                            && !tls
                            && looks_like_client_hello(frames.read_buffer())
                        {
                            shared.tls.stats().hello_on_plaintext(shared.tls.name());
                            warn_limited!(PEER_FAULTS, %peer, "closing connection: a TLS ClientHello on a plaintext listener");
                        } else {
                            warn_limited!(PEER_FAULTS, %peer, "closing connection: {e}");
                        }
                        break;
                    }
                }
            }
            None => break,
        }
    }
    // Let requests already being handled finish writing their responses (the client may only
    // have closed its sending half), bounded; a forced close does not wait.
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(5), in_flight.drained()) => {}
        () = closed.cancelled() => {}
    }
    closed.cancel();
    let _ = writer.await;
    conn.pending.lock().clear();
    handler.on_close(&conn);
    tracing::debug!(conn = conn.id, %peer, "connection closed");
}

/// A TLS handshake record (0x16) of TLS 1.x (0x03 0x0N): what a TLS client sends first.
fn looks_like_client_hello(buf: &[u8]) -> bool {
    matches!(buf, [0x16, 0x03, v, ..] if *v <= 0x04)
}

/// Read buffer of a connection that is not busy (heartbeats, the odd request); above this size
/// it is given back while the connection is idle.
const IDLE_READ_BUFFER: usize = 2 * 1024;

/// The per-connection timer: partial frames and idleness, checked every half of the shorter of
/// the two timeouts (so a limit is enforced within 1.5 times its value).
struct Watchdog {
    tick: tokio::time::Interval,
    /// Frames read so far; compared at each tick to see progress.
    frames: u64,
    frames_at_tick: u64,
    /// When a tick first saw the current partial frame.
    partial_since: Option<tokio::time::Instant>,
    /// The first of the ticks since which no frame arrived and nothing was in flight (the last
    /// activity was before it, so closing `idle_timeout` after it never closes early).
    quiet_since: Option<tokio::time::Instant>,
}

enum Verdict {
    Keep { idle: bool },
    Close(ConnTimeout),
}

impl Watchdog {
    fn new(config: &ServerConfig) -> Self {
        let shortest = config
            .idle_timeout
            .map_or(config.frame_timeout, |i| i.min(config.frame_timeout));
        let every = (shortest / 2).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watchdog {
            tick,
            frames: 0,
            frames_at_tick: 0,
            partial_since: None,
            quiet_since: None,
        }
    }

    fn check(&mut self, config: &ServerConfig, buffered: &[u8], in_flight: usize) -> Verdict {
        let now = tokio::time::Instant::now();
        let progressed = self.frames != self.frames_at_tick;
        self.frames_at_tick = self.frames;
        let busy = progressed || in_flight > 0;
        if busy {
            self.quiet_since = None;
        }
        if progressed {
            self.partial_since = None;
        }
        if !buffered.is_empty() {
            let since = *self.partial_since.get_or_insert(now);
            if now.duration_since(since) >= config.frame_timeout {
                return Verdict::Close(ConnTimeout::PartialFrame);
            }
            return Verdict::Keep { idle: false };
        }
        self.partial_since = None;
        if busy {
            return Verdict::Keep { idle: false };
        }
        let since = *self.quiet_since.get_or_insert(now);
        match config.idle_timeout {
            Some(idle) if now.duration_since(since) >= idle => Verdict::Close(ConnTimeout::Idle),
            _ => Verdict::Keep { idle: true },
        }
    }
}
