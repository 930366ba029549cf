//! A configuration file reloaded on change: the broker's `--acl`, the sidecar's
//! `--verify-client-signatures` accounts and `--authz` policy.
//!
//! The file is polled (modification time and length, every `interval`); a changed file is read
//! and parsed, and only a file that parses replaces the value in use: a bad edit is logged and
//! the last good value kept until the file changes again. The first load must succeed (a
//! process does not start on a file it cannot use). Editors that write in place may be seen
//! half-written; that too is only a failed reload, retried at the next change. Files are read
//! whole and bounded by [`MAX_FILE_BYTES`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A file that could not be used.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {reason}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

type Parse<T> = fn(&str) -> Result<T, String>;

/// What identifies a version of the file without reading it.
type Stamp = (Option<SystemTime>, u64);

/// A parsed file and the means to reload it.
pub struct Reloading<T> {
    path: PathBuf,
    what: &'static str,
    parse: Parse<T>,
    current: RwLock<Arc<T>>,
    stamp: Mutex<Stamp>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    (meta.modified().ok(), meta.len())
}

fn read(path: &Path, what: &'static str) -> Result<(String, Stamp), ReloadError> {
    let err = |source| ReloadError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReloadError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    Ok((text, stamp_of(&meta)))
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads `path` for the first time; `what` names the file in errors and logs.
    pub fn load(
        path: impl Into<PathBuf>,
        what: &'static str,
        parse: Parse<T>,
    ) -> Result<Arc<Self>, ReloadError> {
        let path = path.into();
        let (text, stamp) = read(&path, what)?;
        let value = parse(&text).map_err(|reason| ReloadError::Parse {
            what,
            path: path.clone(),
            reason,
        })?;
        Ok(Arc::new(Reloading {
            path,
            what,
            parse,
            current: RwLock::new(Arc::new(value)),
            stamp: Mutex::new(stamp),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// The value in use.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Successful reloads since the first load.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes of the file that did not load (the last good value was kept).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reloads the file if it changed since it was last looked at. Blocking file I/O: call it
    /// off the runtime's workers ([`Reloading::run`] does).
    pub fn poll(&self) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                let mut stamp = self.stamp.lock();
                if stamp.0.is_some() {
                    tracing::warn!(file = %self.path.display(), what = self.what,
                        "cannot read ({e}); keeping the last good version");
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    // Reported once; a file that comes back is reloaded.
                    *stamp = (None, 0);
                }
                return;
            }
        };
        if stamp_of(&meta) == *self.stamp.lock() {
            return;
        }
        let result = read(&self.path, self.what).and_then(|(text, stamp)| {
            (self.parse)(&text)
                .map(|v| (v, stamp))
                .map_err(|reason| ReloadError::Parse {
                    what: self.what,
                    path: self.path.clone(),
                    reason,
                })
        });
        match result {
            Ok((value, stamp)) => {
                *self.current.write() = Arc::new(value);
                *self.stamp.lock() = stamp;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %self.path.display(), what = self.what, "reloaded");
            }
            Err(e) => {
                *self.stamp.lock() = stamp_of(&meta);
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}; keeping the last good version");
            }
        }
    }

    /// Polls every `interval` until `stop` fires.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.poll())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_num(s: &str) -> Result<u32, String> {
        s.trim().parse().map_err(|e| format!("{e}"))
    }

    #[test]
    fn reloads_good_edits_and_keeps_the_last_good() {
        let dir = std::env::temp_dir().join(format!("rocketmesh-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.txt");
        std::fs::write(&path, "1").unwrap();
        let r = Reloading::load(&path, "number", parse_num).unwrap();
        assert_eq!(*r.current(), 1);
        r.poll();
        assert_eq!(
            (r.reloads(), r.failures()),
            (0, 0),
            "unchanged: not re-read"
        );
        std::fs::write(&path, "22").unwrap();
        r.poll();
        assert_eq!((*r.current(), r.reloads()), (22, 1));
        std::fs::write(&path, "bad").unwrap();
        r.poll();
        assert_eq!(
            (*r.current(), r.failures()),
            (22, 1),
            "bad edit keeps the last good"
        );
        r.poll();
        assert_eq!(r.failures(), 1, "a bad version is reported once");
        std::fs::remove_file(&path).unwrap();
        r.poll();
        assert_eq!((*r.current(), r.failures()), (22, 2));
        std::fs::write(&path, "3").unwrap();
        r.poll();
        assert_eq!(*r.current(), 3);
        assert!(Reloading::load(dir.join("absent"), "number", parse_num).is_err());
        std::fs::write(&path, "x").unwrap();
        assert!(Reloading::load(&path, "number", parse_num).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
