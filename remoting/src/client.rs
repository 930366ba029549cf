//! A multiplexed Remoting client connection: many requests in flight on one TCP connection,
//! matched to their responses by opaque.
//!
//! Used by the broker (registration with a nameserver), `rocketmesh bench`, and tests; the
//! sidecar's upstream pools build on it. The peer may also send requests to us (a broker
//! notifying consumers); those are handed to an optional channel.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rocketmesh_filters::codec::{
    CodecError, FrameCodec, FrameLimits, RemotingCodec, RemotingCommand,
};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, Pass};
use super::log_budget::{warn_limited, LogBudget};
use super::tls::{ClientTls, Stream};

/// Warnings a peer (an upstream broker) can provoke, rate-limited process-wide.
static PEER_FAULTS: LogBudget = LogBudget::new();

/// Default cap on requests in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// Depth of the outgoing frame queue.
const WRITE_QUEUE: usize = 1024;

/// Errors of a client call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connected, but the TLS handshake failed (or timed out).
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Could not connect.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A `host:port` target named no address (the name did not resolve, or resolved to none).
    #[error("resolve {target}: {reason}")]
    Resolve { target: String, reason: String },
    /// No response within the timeout.
    #[error("request code {code} to {addr} timed out after {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        code: i32,
        timeout: Duration,
    },
    /// The connection closed (or failed) before the response arrived.
    #[error("connection to {addr} closed: {reason}")]
    Closed { addr: SocketAddr, reason: String },
    /// The command could not be encoded.
    #[error("cannot send: {0}")]
    Encode(#[from] CodecError),
}

/// What completes a request sent with [`RemotingClient::try_invoke_with`]: called exactly once,
/// on the connection's reader task, with the response, a timeout or the connection's end. It
/// must not block (hand the response on, e.g. to a downstream connection's write queue).
pub trait Completion: Send + 'static {
    fn complete(self, result: Result<RemotingCommand, ClientError>);
}

/// How often the reader looks for callbacks past their deadline.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// Who waits for a response.
enum Waiter {
    /// An `invoke` call (it keeps its own timer).
    Reply(oneshot::Sender<RemotingCommand>),
    /// A callback: no task waits, the reader completes it (or the sweep times it out).
    Callback(CallbackEntry),
}

struct CallbackEntry {
    deadline: Instant,
    code: i32,
    timeout: Duration,
    done: Box<dyn FnOnce(Result<RemotingCommand, ClientError>) + Send>,
    /// The request's in-flight slot, released with the entry.
    _slot: Pass,
}

#[derive(Default)]
struct PendingMap {
    waiters: HashMap<i32, Waiter>,
    /// Callback entries among `waiters` (the sweep is skipped when 0).
    callbacks: AtomicUsize,
    /// Set by the reader when it has failed every waiter on its way out: nothing may be
    /// registered after that (no reader would ever complete it).
    drained: bool,
}

type Pending = Arc<Mutex<PendingMap>>;

impl std::fmt::Debug for PendingMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingMap")
            .field("waiters", &self.waiters.len())
            .finish()
    }
}

/// One client connection. Cheap to clone; the connection closes when the last clone is dropped
/// or [`RemotingClient::close`] is called.
#[derive(Clone, Debug)]
pub struct RemotingClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    next_opaque: AtomicI32,
    pending: Pending,
    out: mpsc::Sender<RemotingCommand>,
    slots: Arc<Gate>,
    closed: CancellationToken,
    /// `closed`, readable without a lock (the token's own check takes one): set by `close`
    /// and by the reader when the connection ends for any other reason.
    dead: Arc<AtomicBool>,
    close_reason: Arc<Mutex<Option<String>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader sees this, ends and sets `dead`.
        self.closed.cancel();
    }
}

impl RemotingClient {
    /// Connects to `addr`. Requests the peer sends to us are forwarded to `inbound` when given
    /// (and dropped otherwise).
    pub async fn connect(
        addr: SocketAddr,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        Ok(Self::from_stream(Stream::Tcp(stream), addr, inbound))
    }

    /// Connects to `addr` and, with `tls`, handshakes as a client of `host` (the SNI and the
    /// name checked unless the settings name identities).
    pub async fn connect_tls(
        addr: SocketAddr,
        host: &str,
        tls: Option<&ClientTls>,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        let Some(tls) = tls else {
            return Self::connect(addr, inbound).await;
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let stream = tls
            .connect(tcp, host)
            .await
            .map_err(|source| ClientError::Tls { addr, source })?;
        Ok(Self::from_stream(stream, addr, inbound))
    }

    /// Connects with a deadline.
    pub async fn connect_timeout(
        addr: SocketAddr,
        timeout: Duration,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        Self::connect_timeout_tls(addr, "", None, timeout, inbound).await
    }

    /// Connects (and handshakes, with `tls`) with a deadline.
    pub async fn connect_timeout_tls(
        addr: SocketAddr,
        host: &str,
        tls: Option<&ClientTls>,
        timeout: Duration,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        match tokio::time::timeout(timeout, Self::connect_tls(addr, host, tls, inbound)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Connect {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            }),
        }
    }

    /// Connects to `target`: `ip:port`, `[v6]:port` or `host:port`. A name is resolved now (so a
    /// reconnect re-resolves it: a restarted service may have moved) and each of its A/AAAA
    /// addresses is tried in turn, within `timeout` in all; the error is the last address's.
    pub async fn connect_to(
        target: &str,
        timeout: Duration,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        Self::connect_to_tls(target, timeout, None, inbound).await
    }

    /// [`RemotingClient::connect_to`] with TLS when `tls` is given (the target's host is the
    /// name sent and checked, unless the settings say otherwise).
    pub async fn connect_to_tls(
        target: &str,
        timeout: Duration,
        tls: Option<&ClientTls>,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Result<Self, ClientError> {
        let host = crate::tls::host_of(target);
        let deadline = tokio::time::Instant::now() + timeout;
        let addrs = resolve(target, timeout).await?;
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            // Later addresses keep a share of the time: one black-holed address must not eat it all.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / (addrs.len() - i) as u32;
            match Self::connect_timeout_tls(*addr, host, tls, share, inbound.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(target, %addr, "connect failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Resolve {
            target: target.to_owned(),
            reason: "no address".into(),
        }))
    }

    fn from_stream(
        stream: Stream,
        addr: SocketAddr,
        inbound: Option<mpsc::Sender<RemotingCommand>>,
    ) -> Self {
        let (read, write) = stream.into_split();
        let (out, out_rx) = mpsc::channel::<RemotingCommand>(WRITE_QUEUE);
        let pending: Pending = Arc::default();
        let closed = CancellationToken::new();
        let dead: Arc<AtomicBool> = Arc::default();
        let close_reason: Arc<Mutex<Option<String>>> = Arc::default();

        // Writer: drain whatever is queued into one buffer, one write per batch.
        let w_closed = closed.clone();
        let w_reason = close_reason.clone();
        tokio::spawn(async move {
            if let Some(e) =
                super::write_loop(write, out_rx, FrameLimits::default(), w_closed).await
            {
                set_reason(&w_reason, format!("write failed: {e}"));
            }
        });

        // Reader: complete pending calls, forward peer requests, time out late callbacks.
        let r_pending = pending.clone();
        let r_closed = closed.clone();
        let r_dead = dead.clone();
        let r_reason = close_reason.clone();
        tokio::spawn(async move {
            // Raw frames, headers parsed here: FramedRead ends the stream after any decoder error.
            let mut frames =
                FramedRead::with_capacity(read, FrameCodec::default(), super::READ_BUFFER);
            // One registration for the connection's life, not one per frame.
            let mut stop = std::pin::pin!(r_closed.cancelled());
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Frames first; the sweep and `stop` are looked at whenever the socket has
                // nothing more to read (see the server's loop).
                let next = tokio::select! {
                    biased;
                    f = frames.next() => f,
                    _ = sweep.tick() => {
                        sweep_expired(&r_pending, addr);
                        continue;
                    }
                    () = &mut stop => break,
                };
                // Custom headers read on first use: a response relayed by opaque never needs its own.
                match next.map(|r| r.and_then(RemotingCodec::parse_frame_deferred)) {
                    Some(Ok(cmd)) if cmd.is_response() => {
                        let waiter = take_waiter(&r_pending, cmd.opaque());
                        match waiter {
                            Some(Waiter::Reply(tx)) => {
                                let _ = tx.send(cmd);
                            }
                            Some(Waiter::Callback(entry)) => (entry.done)(Ok(cmd)),
                            None => {}
                        }
                    }
                    Some(Ok(cmd)) => {
                        if let Some(tx) = &inbound {
                            let _ = tx.try_send(cmd);
                        }
                    }
                    Some(Err(e)) if !e.is_fatal() => {
                        warn_limited!(PEER_FAULTS, %addr, "skipping malformed frame: {e}");
                    }
                    Some(Err(e)) => {
                        set_reason(&r_reason, format!("read failed: {e}"));
                        break;
                    }
                    None => {
                        set_reason(&r_reason, "peer closed the connection".into());
                        break;
                    }
                }
            }
            r_dead.store(true, Ordering::Release);
            r_closed.cancel();
            // Fail every waiter at once rather than letting each time out.
            let waiters: Vec<Waiter> = {
                let mut p = r_pending.lock();
                p.drained = true;
                p.callbacks.store(0, Ordering::Relaxed);
                p.waiters.drain().map(|(_, w)| w).collect()
            };
            for w in waiters {
                if let Waiter::Callback(entry) = w {
                    (entry.done)(Err(closed_error(addr, &r_reason)));
                }
            }
        });

        Self {
            inner: Arc::new(Inner {
                addr,
                next_opaque: AtomicI32::new(1),
                pending,
                out,
                slots: Gate::new(DEFAULT_MAX_IN_FLIGHT),
                closed,
                dead,
                close_reason,
            }),
        }
    }

    /// The peer address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.dead.load(Ordering::Acquire)
    }

    /// Completes once the connection is closed: by [`RemotingClient::close`], by the peer, or
    /// by a failure (a registration loop waits on it to register again at once).
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await;
    }

    /// Closes the connection; calls in flight fail with [`ClientError::Closed`].
    pub fn close(&self) {
        self.inner.dead.store(true, Ordering::Release);
        self.inner.closed.cancel();
    }

    fn closed_error(&self) -> ClientError {
        closed_error(self.inner.addr, &self.inner.close_reason)
    }

    /// Sends a request and waits for its response. The command's opaque is replaced by one
    /// unique on this connection.
    pub async fn invoke(
        &self,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        let code = cmd.code();
        let _slot = self.inner.slots.pass().await;
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
        cmd.set_opaque(opaque);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending.lock();
            // The reader fails every waiter once when the connection ends; one registered after
            // that would only time out.
            if p.drained {
                return Err(self.closed_error());
            }
            p.waiters.insert(opaque, Waiter::Reply(tx));
        }
        let guard = PendingGuard {
            pending: &self.inner.pending,
            opaque,
        };
        if self.inner.out.send(cmd).await.is_err() {
            return Err(self.closed_error());
        }
        // Only the waiter decides: the reader answers it, or drops it when the connection ends
        // (every waiter, at once). Racing it against the close signal lost answers that had
        // arrived: the reader hands the answer over and then sees the end of the stream, and
        // under tokio's cooperative budget a ready oneshot can poll Pending once, letting the
        // close branch win.
        let result = tokio::time::timeout(timeout, rx).await;
        drop(guard);
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                addr: self.inner.addr,
                code,
                timeout,
            }),
        }
    }

    /// Sends a request without waiting for it: `done` is completed later by the connection's
    /// reader (the response, [`ClientError::Timeout`] about `timeout` after now, or
    /// [`ClientError::Closed`]). No task and no timer per request, which is what the sidecar's
    /// send path needs. When the request cannot be queued right now (connection closed, all
    /// in-flight slots taken, write queue full) nothing is sent and both are handed back.
    #[allow(clippy::result_large_err)]
    pub fn try_invoke_with<C: Completion>(
        &self,
        cmd: RemotingCommand,
        timeout: Duration,
        done: C,
    ) -> Result<(), (RemotingCommand, C)> {
        self.try_invoke_at(cmd, Instant::now(), timeout, done)
    }

    /// [`RemotingClient::try_invoke_with`] with the caller's reading of the clock as "now"
    /// (a caller that timestamps the request anyway saves a second reading).
    #[allow(clippy::result_large_err)]
    pub fn try_invoke_at<C: Completion>(
        &self,
        mut cmd: RemotingCommand,
        now: Instant,
        timeout: Duration,
        done: C,
    ) -> Result<(), (RemotingCommand, C)> {
        if self.is_closed() {
            return Err((cmd, done));
        }
        let Some(slot) = self.inner.slots.try_pass() else {
            return Err((cmd, done));
        };
        // Reserve the write queue first: once the callback is registered, the request goes out.
        let permit = match self.inner.out.try_reserve() {
            Ok(p) => p,
            Err(_) => return Err((cmd, done)),
        };
        {
            let mut p = self.inner.pending.lock();
            if p.drained {
                // The reader ended after the check above: no one would complete a callback.
                return Err((cmd, done));
            }
            let opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
            let entry = CallbackEntry {
                deadline: now + timeout,
                code: cmd.code(),
                timeout,
                done: Box::new(move |r| done.complete(r)),
                _slot: slot,
            };
            cmd.set_opaque(opaque);
            p.waiters.insert(opaque, Waiter::Callback(entry));
            p.callbacks.fetch_add(1, Ordering::Relaxed);
        }
        permit.send(cmd);
        Ok(())
    }

    /// Sends a oneway request (flag bit 1 set); no response is expected.
    pub async fn invoke_oneway(&self, cmd: RemotingCommand) -> Result<(), ClientError> {
        let opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
        let cmd = cmd.oneway().with_opaque(opaque);
        self.inner
            .out
            .send(cmd)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Sends a response to a request the peer made to us.
    pub async fn respond(&self, resp: RemotingCommand) -> Result<(), ClientError> {
        self.inner
            .out
            .send(resp)
            .await
            .map_err(|_| self.closed_error())
    }
}

/// Removes a pending entry when the caller gives up (timeout or cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    opaque: i32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().waiters.remove(&self.opaque);
    }
}

/// Removes the waiter of `opaque`, keeping the callback count right.
fn take_waiter(pending: &Pending, opaque: i32) -> Option<Waiter> {
    let mut p = pending.lock();
    let w = p.waiters.remove(&opaque);
    if matches!(w, Some(Waiter::Callback(_))) {
        p.callbacks.fetch_sub(1, Ordering::Relaxed);
    }
    w
}

/// Completes the callbacks whose deadline has passed with [`ClientError::Timeout`].
/// The addresses `target` (`ip:port`, `[v6]:port`, `host:port`) names, in the resolver's order,
/// within `timeout`. An address literal does not touch the resolver.
pub async fn resolve(target: &str, timeout: Duration) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let err = |reason: String| ClientError::Resolve {
        target: target.to_owned(),
        reason,
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host(target)).await {
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err(err(e.to_string())),
        Ok(Ok(found)) => {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for a in found {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            if addrs.is_empty() {
                Err(err("the name has no A or AAAA record".into()))
            } else {
                Ok(addrs)
            }
        }
    }
}

fn sweep_expired(pending: &Pending, addr: SocketAddr) {
    let expired: Vec<CallbackEntry> = {
        let mut p = pending.lock();
        if p.callbacks.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let late: Vec<i32> = p
            .waiters
            .iter()
            .filter_map(|(o, w)| match w {
                Waiter::Callback(e) if e.deadline <= now => Some(*o),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(late.len());
        for o in late {
            if let Some(Waiter::Callback(e)) = p.waiters.remove(&o) {
                out.push(e);
            }
        }
        p.callbacks.fetch_sub(out.len(), Ordering::Relaxed);
        out
    };
    for e in expired {
        let err = ClientError::Timeout {
            addr,
            code: e.code,
            timeout: e.timeout,
        };
        (e.done)(Err(err));
    }
}

fn set_reason(slot: &Mutex<Option<String>>, reason: String) {
    let mut guard = slot.lock();
    guard.get_or_insert(reason);
}

/// The error of a call on a closed connection, with the reason it closed.
fn closed_error(addr: SocketAddr, reason: &Mutex<Option<String>>) -> ClientError {
    ClientError::Closed {
        addr,
        reason: reason.lock().clone().unwrap_or_else(|| "closed".into()),
    }
}
