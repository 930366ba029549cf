//! What the client handles and the ADS task share.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};

use super::config::{ClientConfig, XdsMode};
use super::counters::Counters;
use super::dump::NackInfo;
use super::state::State;
use super::subscribe::Waiters;
use crate::cache::RouteTable;

/// The stream's health, for `/config_dump`.
#[derive(Debug, Default)]
pub(crate) struct Status {
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_nack: Option<NackInfo>,
    pub mode: Option<XdsMode>,
}

pub(crate) struct Inner {
    pub cfg: ClientConfig,
    /// The snapshot the data path reads.
    pub table: ArcSwap<RouteTable>,
    pub waiters: Waiters,
    /// Topics to subscribe, to the ADS task (`None`: a static client).
    pub cmds: Option<mpsc::Sender<String>>,
    pub counters: Counters,
    pub status: Mutex<Status>,
    /// The resource tables and subscriptions: written by the ADS task, read by `config_dump`.
    pub state: Mutex<State>,
    pub connected: watch::Sender<bool>,
    pub stop: Notify,
}
