//! On-demand topic subscriptions as the data path sees them: one `watch` per topic being waited
//! for, shared by every concurrent caller (one subscription however many wait). The ADS task
//! fires it when the topic resolves (Ready or Missing) and removes it.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::config::RouteError;

/// What a waiter learns: `None` while pending.
pub(crate) type Outcome = Option<Result<(), RouteError>>;

/// A caller's place in a topic's wait.
pub(crate) struct Waiting {
    pub rx: watch::Receiver<Outcome>,
    /// This caller created the wait, so it asks the ADS task to subscribe.
    pub created: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_topic: Mutex<HashMap<String, watch::Sender<Outcome>>>,
}

impl Waiters {
    /// Joins (or starts) the wait for `topic`. `recheck` runs under the lock first: the ADS task
    /// swaps the snapshot before it resolves waiters, so a `Some` from it means "already known"
    /// and is handed back instead of a wait.
    pub fn join<T>(&self, topic: &str, recheck: impl FnOnce() -> Option<T>) -> Result<Waiting, T> {
        let mut waiters = self.by_topic.lock();
        if let Some(known) = recheck() {
            return Err(known);
        }
        Ok(match waiters.get(topic) {
            Some(tx) => Waiting {
                rx: tx.subscribe(),
                created: false,
            },
            None => {
                let (tx, rx) = watch::channel(None);
                waiters.insert(topic.to_owned(), tx);
                Waiting { rx, created: true }
            }
        })
    }

    /// Resolves the wait for `topic`, if any.
    pub fn notify(&self, topic: &str, outcome: Result<(), RouteError>) {
        if let Some(tx) = self.by_topic.lock().remove(topic) {
            tx.send_replace(Some(outcome));
        }
    }

    pub fn fail_all(&self, e: RouteError) {
        for (_, tx) in self.by_topic.lock().drain() {
            tx.send_replace(Some(Err(e.clone())));
        }
    }

    /// Topics being waited for.
    pub fn pending(&self) -> Vec<String> {
        self.by_topic.lock().keys().cloned().collect()
    }
}

/// Waits for the outcome on `rx`. A dropped sender without an outcome means the task stopped.
pub(crate) async fn outcome(mut rx: watch::Receiver<Outcome>) -> Result<(), RouteError> {
    loop {
        if let Some(outcome) = rx.borrow_and_update().clone() {
            return outcome;
        }
        if rx.changed().await.is_err() {
            return Err(RouteError::Stopped);
        }
    }
}
