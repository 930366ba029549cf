//! The state-of-the-world stream (`StreamAggregatedResources`).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use tracing::{debug, warn};
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::protobuf::Any;

use crate::catalog::Catalog;
use crate::resources::{route_config_to_proto, to_any};

use super::stream::{lookup_named, truncate, AdsStream, Kind, Outbound, Stop};

const SOTW_KINDS: [Kind; 3] = [
    Kind::Cluster,
    Kind::RouteConfiguration,
    Kind::LoadAssignment,
];

#[derive(Default)]
struct SotwType {
    /// Requested names, sorted and unique.
    names: Vec<String>,
    /// Cluster only: every cluster.
    wildcard: bool,
    /// Nonce of the last response; replies carrying another nonce are stale and ignored.
    nonce: String,
    /// Digest of the last response's resources, so changes that do not alter them send nothing.
    digest: Option<u64>,
    /// A reconnecting client (its first request carried a version) asked during the catalog's
    /// warm-up: a SotW response replaces the client's whole table, and one built from a
    /// registry still filling would drop what it holds. Answered when the warm-up ends.
    await_warmup: bool,
}

pub(super) struct SotwStream {
    out: Outbound<DiscoveryResponse>,
    types: HashMap<Kind, SotwType>,
}

impl SotwStream {
    pub(super) fn new(out: Outbound<DiscoveryResponse>) -> Self {
        SotwStream {
            out,
            types: HashMap::new(),
        }
    }
}

impl AdsStream for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const FLAVOUR: &'static str = "SotW";

    fn out(&mut self) -> &mut Outbound<Self::Resp> {
        &mut self.out
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Stop> {
        self.out.learn_node(req.node.as_ref());
        let Some(kind) = Kind::of(&req.type_url).filter(|k| SOTW_KINDS.contains(k)) else {
            warn!(stream = self.out.id(), node = %self.out.node, type_url = %truncate(&req.type_url, 200),
                "ignoring a SotW request for a type this server does not serve");
            return Ok(());
        };
        let max = self.out.opts().max_names_per_stream;
        if req.resource_names.len() > max {
            return Err(self
                .out
                .fail(self.out.too_many_names(req.resource_names.len()))
                .await);
        }
        let st = self.types.entry(kind).or_default();
        // A nonce from before this stream (a reconnecting client) is not a reply to anything here:
        // the request is served as a fresh one.
        if !req.response_nonce.is_empty() && !st.nonce.is_empty() {
            if req.response_nonce != st.nonce {
                debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(),
                    nonce = %truncate(&req.response_nonce, 200), "ignoring a reply to a superseded response");
                return Ok(());
            }
            self.out.record_reply(
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
        }
        let first = st.nonce.is_empty();
        if first && !req.version_info.is_empty() && self.out.catalog().is_warming() {
            debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(),
                "reconnecting client during the warm-up: answering when it ends");
            st.await_warmup = true;
        }
        let mut names = req.resource_names;
        names.sort();
        names.dedup();
        let wildcard =
            kind == Kind::Cluster && (names.is_empty() || names.iter().any(|n| n == "*"));
        names.retain(|n| n != "*");
        let changed = first || names != st.names || wildcard != st.wildcard;
        st.names = names;
        st.wildcard = wildcard;

        let total: usize = self
            .types
            .values()
            .map(|t| t.names.len() + usize::from(t.wildcard))
            .sum();
        if total > max {
            return Err(self.out.fail(self.out.too_many_names(total)).await);
        }
        self.out.permit.set_subscriptions(total as u64);
        if changed {
            self.respond(kind, true).await?;
        }
        Ok(())
    }

    async fn on_change(&mut self, last_rev: &mut u64) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let mut affected: HashSet<Kind> = HashSet::new();
        match catalog.changes_since(*last_rev) {
            Some((rev, changes)) => {
                *last_rev = rev;
                for change in &changes {
                    let (topic, cluster_names) = Catalog::names_of(change);
                    for (&kind, st) in &self.types {
                        let hit = match kind {
                            Kind::RouteConfiguration => topic.is_some() && !st.names.is_empty(),
                            _ => {
                                st.wildcard
                                    || cluster_names
                                        .iter()
                                        .any(|n| st.names.binary_search(n).is_ok())
                            }
                        };
                        if hit {
                            affected.insert(kind);
                        }
                    }
                }
            }
            None => {
                *last_rev = catalog.revision();
                affected.extend(self.types.keys().copied());
            }
        }
        let warming = catalog.is_warming();
        let released: Vec<Kind> = self
            .types
            .iter()
            .filter(|(_, st)| st.await_warmup && !warming)
            .map(|(&k, _)| k)
            .collect();
        affected.extend(released);
        for kind in SOTW_KINDS {
            if affected.contains(&kind) {
                self.respond(kind, false).await?;
            }
        }
        Ok(())
    }
}

impl SotwStream {
    /// Sends the whole current state of `kind`; unless `force`, only when it differs from the
    /// last response.
    async fn respond(&mut self, kind: Kind, force: bool) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let Some(st) = self.types.get_mut(&kind) else {
            return Ok(());
        };
        let mut force = force;
        if st.await_warmup {
            if catalog.is_warming() {
                return Ok(());
            }
            st.await_warmup = false;
            force = true;
        }
        if !st.wildcard && st.names.is_empty() {
            return Ok(());
        }
        let rev = catalog.revision();
        let resources: Vec<Any> = match kind {
            Kind::RouteConfiguration => {
                let topics = catalog.topics();
                st.names
                    .iter()
                    .map(|rc| {
                        let vhosts: Vec<_> = topics
                            .iter()
                            .filter_map(|t| catalog.vhost(t, &crate::vhds_name(rc, t)).found())
                            .collect();
                        to_any(
                            kind.url(),
                            &route_config_to_proto(rc, vhosts.iter().map(|v| &*v.value)),
                        )
                    })
                    .collect()
            }
            _ => {
                let all;
                let names = if st.wildcard {
                    all = catalog.cluster_names();
                    &all
                } else {
                    &st.names
                };
                names
                    .iter()
                    .filter_map(|n| lookup_named(&catalog, kind, n).found().map(|(_, any)| any))
                    .collect()
            }
        };
        let mut h = DefaultHasher::new();
        for r in &resources {
            r.value.hash(&mut h);
        }
        let digest = h.finish();
        if !force && st.digest == Some(digest) {
            return Ok(());
        }
        let nonce = self.out.next_nonce();
        if let Some(st) = self.types.get_mut(&kind) {
            st.nonce = nonce.clone();
            st.digest = Some(digest);
        }
        debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(), %nonce,
            resources = resources.len(), "SotW push");
        self.out
            .send(DiscoveryResponse {
                version_info: rev.to_string(),
                resources,
                type_url: kind.url().to_owned(),
                nonce,
                ..Default::default()
            })
            .await
    }
}
