//! What the ADS connection runs over when secured: TLS on both ends (rustls through
//! `rocketmesh_remoting::tls`) and bearer tokens (`authorization: Bearer <token>` metadata on
//! every stream, as Istio's sidecars send their service-account token).
//!
//! * Client: [`TlsConnector`] dials, handshakes and hands tonic the stream (the URI stays
//!   `http://`: tonic speaks HTTP/2 over whatever the connector returns; ALPN offers `h2`);
//!   [`bearer`] reads the token file at every stream start, so a rotated token is used from the
//!   next (re)connect on.
//! * Server: [`incoming`] accepts and handshakes each connection on its own task (bounded by the
//!   handshake timeout, so a stalled handshake holds nothing but itself); [`TokenSet`] holds the
//!   accepted tokens, reloaded when their file changes, and checks each stream's metadata.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use rocketmesh_remoting::tls::{host_of, ClientTls, ServerTls, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

/// The ALPN protocol gRPC runs on (gRPC clients such as grpcio require it to be negotiated).
pub const H2: &[u8] = b"h2";

/// Dials the ADS server over TLS (tonic's custom connector).
#[derive(Clone)]
pub struct TlsConnector {
    pub tls: Arc<ClientTls>,
    /// The configured server (`host:port`): its host is the name sent and checked.
    pub target: String,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<Stream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (tls, target) = (self.tls.clone(), self.target.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(target.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(tcp, host_of(&target)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Wraps a stream request with the bearer token read from `token_file` now.
pub fn bearer<T>(message: T, token_file: Option<&Path>) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the xDS token file {}: {e}", path.display()))?;
        let value = format!("Bearer {}", token.trim());
        // The error names the file, never the token.
        let value = value.parse().map_err(|_| {
            format!(
                "the xDS token in {} is not a valid header value",
                path.display()
            )
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Accepted bearer tokens: one per line of a file (blank lines and `#` comments ignored),
/// reloaded when the file's mtime or length changes; a file that cannot be read keeps the
/// last good set.
#[derive(Debug)]
pub struct TokenSet {
    path: PathBuf,
    tokens: RwLock<Vec<String>>,
    seen: Mutex<Option<(SystemTime, u64)>>,
    refused: AtomicU64,
}

impl TokenSet {
    /// Reads the file now (an error here stops the start).
    pub fn load(path: &Path) -> std::io::Result<Arc<Self>> {
        let set = TokenSet {
            path: path.to_owned(),
            tokens: RwLock::new(parse_tokens(&std::fs::read_to_string(path)?)),
            seen: Mutex::new(stamp(path)),
            refused: AtomicU64::new(0),
        };
        Ok(Arc::new(set))
    }

    /// Re-reads the file when it changed.
    pub fn poll(&self) {
        let now = stamp(&self.path);
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let tokens = parse_tokens(&text);
                tracing::info!(file = %self.path.display(), count = tokens.len(), "xDS tokens reloaded");
                *self.tokens.write() = tokens;
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "xDS tokens not reloaded, keeping the last good set: {e}")
            }
        }
    }

    /// Polls the file every `every` until the set is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(set) = weak.upgrade() else { return };
                set.poll();
            }
        });
    }

    /// Streams refused for a missing or unknown token.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a request's `authorization: Bearer <token>`.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Box<Status>> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| {
            // Every accepted token compared in full: the time taken does not say how much of
            // a guess was right.
            self.tokens.read().iter().fold(false, |hit, t| {
                hit | constant_time_eq(t.as_bytes(), p.as_bytes())
            })
        });
        if ok {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rocketmesh_cp_xds_unauthenticated_total").increment(1);
        Err(Box::new(Status::unauthenticated(if presented.is_some() {
            "unknown bearer token"
        } else {
            "missing authorization: Bearer <token>"
        })))
    }
}

fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An accepted ADS connection (TLS or not) as tonic serves it.
pub struct AdsConn {
    stream: Stream,
    info: TcpConnectInfo,
}

impl Connected for AdsConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for AdsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Most ADS handshakes in progress at once; past it the accept loop waits.
const MAX_HANDSHAKES: usize = 256;

/// Accepts on `listener` and handshakes each connection on its own task; finished ones come
/// out of the returned channel. Ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> mpsc::Receiver<Result<AdsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("ADS accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let info = TcpConnectInfo {
                    local_addr: tcp.local_addr().ok(),
                    remote_addr: Some(peer),
                };
                match tls.accept(tcp).await {
                    Ok(stream) => {
                        drop(permit);
                        let _ = tx.send(Ok(AdsConn { stream, info })).await;
                    }
                    Err(e) => tracing::debug!(%peer, "ADS connection refused: {e}"),
                }
            });
        }
    });
    rx
}
