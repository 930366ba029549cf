//! The delta stream (`DeltaAggregatedResources`).

use std::collections::{BTreeSet, HashMap, HashSet};

use prost::Message;
use tracing::{debug, warn};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::catalog::{Catalog, Lookup};
use crate::resources::topic_of_vhds_name;

use super::stream::{lookup_named, truncate, AdsStream, Kind, Outbound, Stop};

const DELTA_KINDS: [Kind; 3] = [Kind::VirtualHost, Kind::Cluster, Kind::LoadAssignment];

/// One type's state on a delta stream.
#[derive(Default)]
struct DeltaType {
    /// A request of this type was seen (the first one may carry initial versions / legacy wildcard).
    seen: bool,
    /// Cluster only: the client wants every cluster.
    wildcard: bool,
    subscribed: HashSet<String>,
    /// VirtualHost only: topic -> subscribed VHDS names of that topic.
    by_topic: HashMap<String, HashSet<String>>,
    /// name -> the version the client holds (sent, or announced in initial_resource_versions).
    held: HashMap<String, String>,
    /// Explicitly subscribed names already reported in removed_resources.
    reported_missing: HashSet<String>,
}

impl DeltaType {
    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }

    fn subscribe(&mut self, kind: Kind, name: String) -> bool {
        if kind == Kind::VirtualHost {
            if let Some(topic) = topic_of_vhds_name(&name) {
                self.by_topic
                    .entry(topic.to_owned())
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.subscribed.insert(name)
    }

    fn unsubscribe(&mut self, name: &str) {
        if self.subscribed.remove(name) {
            if let Some(topic) = topic_of_vhds_name(name) {
                if let Some(names) = self.by_topic.get_mut(topic) {
                    names.remove(name);
                    if names.is_empty() {
                        self.by_topic.remove(topic);
                    }
                }
            }
        }
        self.held.remove(name);
        self.reported_missing.remove(name);
    }

    /// Brings the client's copy of `name` up to date: new version -> `resources`, gone ->
    /// `removed` (once), pending -> nothing yet.
    fn evaluate(&mut self, catalog: &Catalog, kind: Kind, name: &str, out: &mut DeltaBatch) {
        if !self.interested(name) {
            return;
        }
        match lookup_named(catalog, kind, name) {
            Lookup::Found((version, any)) => {
                self.reported_missing.remove(name);
                if self.held.get(name) != Some(&version) {
                    self.held.insert(name.to_owned(), version.clone());
                    out.resources.push(Resource {
                        name: name.to_owned(),
                        version,
                        resource: Some(any),
                        ..Default::default()
                    });
                }
            }
            Lookup::Absent => {
                let held = self.held.remove(name).is_some();
                let explicit = self.subscribed.contains(name);
                let first_report = explicit && self.reported_missing.insert(name.to_owned());
                // Wildcard-only names the client never had need no removal.
                if held || first_report {
                    out.removed.push(name.to_owned());
                }
            }
            Lookup::Pending => {}
        }
    }

    fn count(&self) -> usize {
        self.subscribed.len() + usize::from(self.wildcard)
    }
}

#[derive(Default)]
struct DeltaBatch {
    resources: Vec<Resource>,
    removed: Vec<String>,
}

pub(super) struct DeltaStream {
    out: Outbound<DeltaDiscoveryResponse>,
    types: HashMap<Kind, DeltaType>,
}

impl DeltaStream {
    pub(super) fn new(out: Outbound<DeltaDiscoveryResponse>) -> Self {
        DeltaStream {
            out,
            types: HashMap::new(),
        }
    }
}

impl AdsStream for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const FLAVOUR: &'static str = "delta";

    fn out(&mut self) -> &mut Outbound<Self::Resp> {
        &mut self.out
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Stop> {
        self.out.learn_node(req.node.as_ref());
        let Some(kind) = Kind::of(&req.type_url).filter(|k| DELTA_KINDS.contains(k)) else {
            warn!(stream = self.out.id(), node = %self.out.node, type_url = %truncate(&req.type_url, 200),
                "ignoring a delta request for a type this server does not serve");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            self.out.record_reply(
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
        }
        let max = self.out.opts().max_names_per_stream;
        let incoming = req.resource_names_subscribe.len() + req.initial_resource_versions.len();
        if incoming > max {
            return Err(self.out.fail(self.out.too_many_names(incoming)).await);
        }

        let st = self.types.entry(kind).or_default();
        let first = !st.seen;
        st.seen = true;
        let mut to_evaluate = BTreeSet::new();
        let mut wildcard_added = false;
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.unsubscribe(name);
            }
        }
        // Legacy wildcard: a first Cluster request naming nothing.
        if first
            && kind == Kind::Cluster
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
        {
            st.wildcard = true;
            wildcard_added = true;
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                if kind == Kind::Cluster {
                    wildcard_added |= !st.wildcard;
                    st.wildcard = true;
                } else {
                    warn!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(),
                        "ignoring a wildcard subscription: this type is on demand only");
                }
                continue;
            }
            st.subscribe(kind, name.clone());
            to_evaluate.insert(name);
        }
        if first {
            for (name, version) in req.initial_resource_versions {
                if st.interested(&name) {
                    st.held.insert(name.clone(), version);
                    to_evaluate.insert(name);
                }
            }
        }
        let total: usize = self.types.values().map(DeltaType::count).sum();
        if total > max {
            return Err(self.out.fail(self.out.too_many_names(total)).await);
        }
        self.out.permit.set_subscriptions(total as u64);

        let catalog = self.out.shared.catalog.clone();
        if wildcard_added {
            to_evaluate.extend(catalog.cluster_names());
        }
        let rev = catalog.revision();
        let st = self.types.entry(kind).or_default();
        let mut batch = DeltaBatch::default();
        for name in &to_evaluate {
            st.evaluate(&catalog, kind, name, &mut batch);
        }
        self.flush(kind, rev, batch).await
    }

    async fn on_change(&mut self, last_rev: &mut u64) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let mut names: HashMap<Kind, BTreeSet<String>> = HashMap::new();
        match catalog.changes_since(*last_rev) {
            Some((rev, changes)) => {
                *last_rev = rev;
                for change in &changes {
                    let (topic, cluster_names) = Catalog::names_of(change);
                    if let (Some(topic), Some(st)) = (topic, self.types.get(&Kind::VirtualHost)) {
                        if let Some(vhds) = st.by_topic.get(topic) {
                            names
                                .entry(Kind::VirtualHost)
                                .or_default()
                                .extend(vhds.iter().cloned());
                        }
                    }
                    for kind in [Kind::Cluster, Kind::LoadAssignment] {
                        if let Some(st) = self.types.get(&kind) {
                            for n in &cluster_names {
                                if st.interested(n) || st.held.contains_key(n) {
                                    names.entry(kind).or_default().insert(n.clone());
                                }
                            }
                        }
                    }
                }
            }
            None => {
                // Fell behind the change log: re-check everything.
                *last_rev = catalog.revision();
                debug!(
                    stream = self.out.id(),
                    "ADS stream behind the change log; re-checking all names"
                );
                for (&kind, st) in &self.types {
                    let set = names.entry(kind).or_default();
                    set.extend(st.subscribed.iter().cloned());
                    set.extend(st.held.keys().cloned());
                    if st.wildcard {
                        set.extend(catalog.cluster_names());
                    }
                }
            }
        }
        let rev = *last_rev;
        for kind in DELTA_KINDS {
            let (Some(set), Some(st)) = (names.remove(&kind), self.types.get_mut(&kind)) else {
                continue;
            };
            let mut batch = DeltaBatch::default();
            for name in &set {
                st.evaluate(&catalog, kind, name, &mut batch);
            }
            self.flush(kind, rev, batch).await?;
        }
        Ok(())
    }
}

impl DeltaStream {
    /// Sends a batch as one response, or several when it would not fit `max_message_bytes`.
    async fn flush(&mut self, kind: Kind, rev: u64, batch: DeltaBatch) -> Result<(), Stop> {
        if batch.resources.is_empty() && batch.removed.is_empty() {
            return Ok(());
        }
        // Room for the envelope (type url, nonce, version) and per-field framing.
        let budget = (self.out.opts().max_message_bytes / 4 * 3).max(1);
        let mut chunks: Vec<(Vec<Resource>, Vec<String>)> = vec![(Vec::new(), Vec::new())];
        let mut size = 0;
        let mut push = |len: usize, chunks: &mut Vec<(Vec<Resource>, Vec<String>)>| {
            let last = chunks.last().map(|(r, n)| r.len() + n.len()).unwrap_or(0);
            if size + len > budget && last > 0 {
                chunks.push((Vec::new(), Vec::new()));
                size = 0;
            }
            size += len;
        };
        for name in batch.removed {
            push(name.len() + 8, &mut chunks);
            if let Some(c) = chunks.last_mut() {
                c.1.push(name);
            }
        }
        for r in batch.resources {
            push(r.encoded_len() + 8, &mut chunks);
            if let Some(c) = chunks.last_mut() {
                c.0.push(r);
            }
        }
        for (resources, removed_resources) in chunks {
            let nonce = self.out.next_nonce();
            debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(), %nonce,
                resources = resources.len(), removed = removed_resources.len(), "delta push");
            self.out
                .send(DeltaDiscoveryResponse {
                    system_version_info: rev.to_string(),
                    resources,
                    type_url: kind.url().to_owned(),
                    removed_resources,
                    nonce,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }
}
