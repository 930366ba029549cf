//! [`StoreError`]: everything the message store can fail with.

use std::io;
use std::path::{Path, PathBuf};

use rocketmesh_filters::codec::message::MessageError;
use thiserror::Error;

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An error of the message store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file holds data that cannot be valid (bad record, bad entry, bad JSON).
    #[error("corrupt data in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The file (or directory) holding the data.
        path: PathBuf,
        /// Byte offset in the file, or the global commit log offset for commit log records.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A topic (or consumer group) name is not usable: RocketMQ allows `[%|a-zA-Z0-9_-]`,
    /// 1 to 127 characters.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `topic` or `group`.
        kind: &'static str,
        /// The name (at most 200 characters of it).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue id is negative.
    #[error("invalid queue id {0}")]
    InvalidQueueId(i32),
    /// A message body exceeds the configured maximum message size.
    #[error("message body of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Body length.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// An encoded record does not fit in one commit log segment.
    #[error("record of {size} bytes does not fit in a commit log segment of {segment_size} bytes")]
    RecordTooLarge {
        /// Encoded record length.
        size: u64,
        /// Segment size.
        segment_size: u64,
    },
    /// The message could not be encoded (topic or properties too long).
    #[error("cannot encode message: {0}")]
    Encode(#[from] MessageError),
    /// A read asked for a commit log range that is not (or no longer) stored.
    #[error("commit log range {offset}+{size} is outside the stored range {min}..{max}")]
    OutOfRange {
        /// Requested physical offset.
        offset: u64,
        /// Requested size.
        size: u64,
        /// First stored offset.
        min: u64,
        /// End of the stored data.
        max: u64,
    },
    /// The store configuration is invalid.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// The store has been shut down, or an earlier write or fsync failed and the store refuses
    /// further writes (its files may no longer match its in-memory state).
    #[error("message store is not writable: {0}")]
    Unavailable(&'static str),
    /// The configured maximum number of live pop checkpoints is reached.
    #[error("too many pop checkpoints (maximum {max})")]
    TooManyCheckpoints {
        /// The configured maximum.
        max: usize,
    },
    /// A pop checkpoint is malformed (no offsets, too many offsets, ...).
    /// A failure outside the store's own files (a task that died, a record that did not decode).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("invalid pop checkpoint: {0}")]
    InvalidCheckpoint(String),
}

impl StoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A corrupt-data error.
    pub fn corrupt(path: impl AsRef<Path>, offset: u64, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.as_ref().to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`StoreError::Io`] with `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| StoreError::io(path, e))
    }
}
