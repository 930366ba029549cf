//! A bound on work in flight: at most `limit` passes are out at once.
//!
//! Every request of the data path takes a pass and gives it back (a connection's in-flight
//! requests, an upstream connection's calls). A `tokio::sync::Semaphore` does this with a lock
//! on every release (it must look for waiters); here a release is one atomic subtraction, and
//! the waiter list is only touched while someone waits, which is the rare case of a full gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// At most `limit` [`Pass`]es at once.
#[derive(Debug)]
pub(crate) struct Gate {
    limit: usize,
    taken: AtomicUsize,
    /// Tasks waiting in [`Gate::pass`] or [`Gate::drained`]; releases notify only when non-zero.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One place in a [`Gate`], given back on drop.
#[derive(Debug)]
pub(crate) struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        let gate = &self.0;
        gate.taken.fetch_sub(1, Ordering::SeqCst);
        if gate.waiting.load(Ordering::SeqCst) > 0 {
            // Waiters register before they look at `taken`, so none can miss this.
            gate.freed.notify_waiters();
        }
    }
}

impl Gate {
    /// A gate of `limit` places (at least one).
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Gate {
            limit: limit.max(1),
            taken: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// A pass when a place is free now.
    pub(crate) fn try_pass(self: &Arc<Self>) -> Option<Pass> {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t < self.limit).then_some(t + 1)
            })
            .ok()
            .map(|_| Pass(self.clone()))
    }

    /// A pass, waiting for a place when all are taken.
    pub(crate) async fn pass(self: &Arc<Self>) -> Pass {
        if let Some(p) = self.try_pass() {
            return p;
        }
        self.wait_until(|| self.try_pass()).await
    }

    /// Waits until no pass is out (bounded by the caller).
    pub(crate) async fn drained(&self) {
        self.wait_until(|| (self.taken.load(Ordering::SeqCst) == 0).then_some(()))
            .await
    }

    /// Re-checks `ready` after every release until it gives a value.
    async fn wait_until<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before the check: a release after it wakes this wait.
            freed.as_mut().enable();
            if let Some(v) = ready() {
                return v;
            }
            freed.await;
        }
    }

    /// Passes out now.
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_more_than_the_limit_at_once() {
        let gate = Gate::new(2);
        let a = gate.try_pass().expect("first");
        let _b = gate.try_pass().expect("second");
        assert!(gate.try_pass().is_none(), "a third pass past the limit");
        drop(a);
        assert!(gate.try_pass().is_some(), "a released place is free again");
        assert_eq!(Gate::new(0).limit, 1);
    }

    #[tokio::test]
    async fn every_waiter_gets_a_released_place() {
        // Several tasks wait on a full gate; each release must let one of them in, even when
        // the releases come before the woken tasks run.
        let gate = Gate::new(1);
        let held = gate.try_pass().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        for i in 0..4 {
            let (gate, tx) = (gate.clone(), tx.clone());
            tokio::spawn(async move {
                let p = gate.pass().await;
                tx.send((i, p)).await.unwrap();
            });
        }
        tokio::task::yield_now().await;
        drop(held);
        for _ in 0..4 {
            let (_, p) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a waiter is let in after a release")
                .unwrap();
            assert_eq!(gate.taken(), 1);
            drop(p);
        }
        assert_eq!(gate.taken(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drained_waits_for_the_last_pass() {
        let gate = Gate::new(8);
        let passes: Vec<Pass> = (0..8).map(|_| gate.try_pass().unwrap()).collect();
        let drained = tokio::spawn({
            let gate = gate.clone();
            async move { gate.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "drained while passes are out");
        let releaser = std::thread::spawn(move || {
            for p in passes {
                drop(p);
            }
        });
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained after the last release")
            .unwrap();
        releaser.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contended_passes_never_exceed_the_limit() {
        let gate = Gate::new(3);
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (gate, peak) = (gate.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let p = gate.pass().await;
                    peak.fetch_max(gate.taken(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    drop(p);
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no waiter is left asleep")
                .unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(gate.taken(), 0);
    }
}
