//! The store checkpoint `DIR/checkpoint`: the commit log offset up to which every consume
//! queue is known to be complete and durable, plus two aggregates (number of queues, sum of
//! their max offsets) that let recovery notice consume queue files that went missing.
//!
//! It is written after each flush round (after the commit log and consume queues are fsynced)
//! by writing a temporary file and renaming it, without an fsync of its own: a checkpoint
//! that is lost or torn in a crash is simply older or unreadable, and recovery then re-dispatches
//! more of the commit log (or all of it). A CRC guards against a damaged file.

use std::fs;
use std::path::Path;

use rocketmesh_filters::codec::message::record::body_crc;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::error::{IoContext, Result};
use super::util::{read_bounded, tmp_path};

/// Contents of the checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCheckpoint {
    /// Every commit log record below this offset is indexed in the consume queues, and both
    /// were fsynced.
    pub commit_log_offset: u64,
    /// Number of consume queues at that point.
    pub queues: u64,
    /// Sum of the max offsets of all consume queues at that point.
    pub queue_entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    #[serde(flatten)]
    ckpt: StoreCheckpoint,
    crc: i32,
}

impl StoreCheckpoint {
    fn crc(&self) -> i32 {
        body_crc(
            format!(
                "{}:{}:{}",
                self.commit_log_offset, self.queues, self.queue_entries
            )
            .as_bytes(),
        )
    }

    /// Loads the checkpoint; `None` when it is missing or unreadable (logged).
    pub fn load(path: &Path) -> Option<Self> {
        let data = match read_bounded(path, 4096) {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                warn!("ignoring store checkpoint: {e}");
                return None;
            }
        };
        match serde_json::from_slice::<OnDisk>(&data) {
            Ok(d) if d.crc == d.ckpt.crc() => Some(d.ckpt),
            Ok(_) => {
                warn!(path = %path.display(), "ignoring store checkpoint with a bad CRC");
                None
            }
            Err(e) => {
                warn!(path = %path.display(), "ignoring unreadable store checkpoint: {e}");
                None
            }
        }
    }

    /// Writes the checkpoint (temporary file + rename, no fsync; see the module doc).
    pub fn save(&self, path: &Path) -> Result<()> {
        let data = serde_json::to_vec(&OnDisk {
            ckpt: *self,
            crc: self.crc(),
        })
        .unwrap_or_default();
        let tmp = tmp_path(path);
        fs::write(&tmp, &data).at(&tmp)?;
        fs::rename(&tmp, path).at(path)
    }
}
