//! One drain primitive for every process (sidecar, broker, control plane, demo): every
//! background task is spawned through a [`Drain`], which tracks it; shutdown is two steps.
//!
//! 1. [`Drain::begin`]: the draining signal fires. Tasks that start new work (prefetch, renewal,
//!    accept loops) stop doing so; work already started goes on.
//! 2. [`Drain::finish`]: whatever still runs is cancelled (its future dropped at the next await),
//!    and the call returns once every task has ended. Nothing is left detached.
//!
//! Between the two the owner waits for what it owes (answers, acks), bounded by its deadline.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Tracks tasks and carries the draining and abort signals (cheap to clone; clones share).
#[derive(Debug, Clone, Default)]
pub struct Drain {
    tasks: TaskTracker,
    draining: CancellationToken,
    abort: CancellationToken,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut` as a tracked task on the current runtime; [`Drain::finish`] cancels it if it
    /// is still running then. The handle yields `None` for a cancelled task.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let abort = self.abort.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = abort.cancelled() => None,
                out = fut => Some(out),
            }
        })
    }

    /// Starts draining (idempotent).
    pub fn begin(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// A token that fires when draining begins (for APIs that take one).
    pub fn draining_token(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Cancels what still runs and waits until every task has ended. Tasks spawned afterwards
    /// are cancelled at once.
    pub async fn finish(&self) {
        self.draining.cancel();
        self.abort.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn finish_cancels_and_waits_for_every_task() {
        let d = Drain::new();
        let done = d.spawn(async { 7 });
        assert_eq!(done.await.ok().flatten(), Some(7));
        let stuck = d.spawn(std::future::pending::<()>());
        let polite = {
            let d2 = d.clone();
            d.spawn(async move {
                d2.draining().await;
                "saw the drain"
            })
        };
        assert_eq!(d.running(), 2);
        d.begin();
        assert_eq!(polite.await.ok().flatten(), Some("saw the drain"));
        tokio::time::timeout(Duration::from_secs(5), d.finish())
            .await
            .expect("finish returns once the stuck task is cancelled");
        assert_eq!(stuck.await.ok().flatten(), None);
        assert_eq!(d.running(), 0);
        // After finish, a new task is cancelled at once.
        assert_eq!(d.spawn(async { 1 }).await.ok().flatten(), None);
    }
}
