//! One client connection as handlers see it ([`Connection`]): identity and addresses,
//! server-to-client requests ([`Connection::notify`], [`Connection::request`] /
//! [`Connection::invoke`], bounded by [`MAX_PENDING_REQUESTS`]) and the in-flight
//! [`RequestSlot`] a request holds until its answer is queued. The server (`server.rs`) builds
//! connections and runs their reader and writer.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::codec::RemotingCommand;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gate::Pass;

/// One of a connection's in-flight request slots (`ServerConfig::max_in_flight`): held until the
/// request's response is queued for writing, so the write queue cannot overflow. It also counts
/// the request in the server's in-flight total that a drain waits on.
#[derive(Debug)]
pub struct RequestSlot {
    pub(crate) _conn: Pass,
    pub(crate) _server: Pass,
}

/// One client connection, as seen by handlers.
#[derive(Debug)]
pub struct Connection {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) original_dst: Option<SocketAddr>,
    pub(crate) label: Option<Arc<str>>,
    /// Served over TLS.
    pub(crate) tls: bool,
    /// Boxed: see `write_loop` (an idle connection's queue then costs 256 bytes, not 6.5 KiB).
    pub(crate) out: mpsc::Sender<Box<RemotingCommand>>,
    pub(crate) closed: CancellationToken,
    pub(crate) next_opaque: AtomicI32,
    pub(crate) pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    /// The server's tasks: a delayed delivery runs there too.
    pub(crate) tasks: TaskTracker,
}

impl Connection {
    /// Process-unique connection id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Our address on this connection.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// Where the client meant to connect, when a redirect brought it here ([`Admission`]).
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.original_dst
    }
    /// The handler's label for this connection ([`Admission`]).
    pub fn label(&self) -> Option<&Arc<str>> {
        self.label.as_ref()
    }
    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
    /// Closes the connection.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Sends a oneway request to the client without waiting; false when the connection is gone
    /// or its write queue is full (a notification is best effort).
    pub fn notify(&self, cmd: RemotingCommand) -> bool {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        self.out
            .try_send(Box::new(cmd.oneway().with_opaque(opaque)))
            .is_ok()
    }

    /// Queues the response to a request taken by [`Handler::try_handle_inline`] and then frees
    /// its slot. Never blocks: in the rare case the write queue is full (notifications share it)
    /// a task waits for room.
    pub fn deliver(&self, response: RemotingCommand, slot: RequestSlot) {
        match self.out.try_send(Box::new(response)) {
            Ok(()) | Err(TrySendError::Closed(_)) => drop(slot),
            Err(TrySendError::Full(response)) => {
                let out = self.out.clone();
                let closed = self.closed.clone();
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = out.send(response) => {}
                        () = closed.cancelled() => {}
                    }
                    drop(slot);
                });
            }
        }
    }

    /// Sends a request to the client and waits for its response; `None` on any failure (see
    /// [`Connection::request`] for the reasons).
    pub async fn invoke(&self, cmd: RemotingCommand, timeout: Duration) -> Option<RemotingCommand> {
        self.request(cmd, timeout).await.ok()
    }

    /// Sends a request to the client and waits up to `timeout` (queueing included) for its
    /// response. At most [`MAX_PENDING_REQUESTS`] requests wait on one connection; an entry
    /// leaves the pending table when its response arrives, when the wait times out or is
    /// cancelled, and when the connection closes.
    pub async fn request(
        &self,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RequestError> {
        if self.is_closed() {
            return Err(RequestError::Closed);
        }
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= MAX_PENDING_REQUESTS {
                return Err(RequestError::TooManyPending);
            }
            pending.insert(opaque, tx);
        }
        let _guard = PendingEntry {
            pending: &self.pending,
            opaque,
        };
        let exchange = async {
            self.out
                .send(Box::new(cmd.with_opaque(opaque)))
                .await
                .map_err(|_| RequestError::Closed)?;
            // The sender is dropped when the connection closes (the table is cleared).
            rx.await.map_err(|_| RequestError::Closed)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Requests waiting for a response on this connection.
    pub fn pending_requests(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Most requests [`Connection::request`] keeps waiting for a response on one connection.
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Why [`Connection::request`] got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No response within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the response arrived.
    #[error("the connection closed")]
    Closed,
    /// [`MAX_PENDING_REQUESTS`] requests already wait on this connection.
    #[error("too many requests waiting on this connection")]
    TooManyPending,
}

/// Removes a pending request when its waiter ends, however it ends.
struct PendingEntry<'a> {
    pending: &'a Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    opaque: i32,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.opaque);
    }
}

pub(crate) static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);
