//! The traffic API on the control plane's admin server (JSON in and out; `rocketmesh ctl`
//! drives it):
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /api/routes[?topic=T]` | | per topic: brokers with readable / writable / weight as pushed, the policy, the migration |
//! | `POST /api/weights` | `{"topic":T,"weights":{"broker-a":90,"broker-b":10}}` | the policy |
//! | `POST /api/policy` | `{"topic":T,"policy":{"weights":{..},"no_read":[..],"no_write":[..]}}` (`null` clears) | the policy |
//! | `POST /api/migrate` | `{"topic":T,"from":A,"to":B}` | the migration |
//! | `GET /api/migrations[?topic=T]` | | the migrations |
//! | `POST /api/abort` | `{"topic":T}` | the migration |
//!
//! Errors: 400 bad input, 404 unknown topic or broker, 409 conflict (a migration in progress),
//! 500 state not saved; always `{"error": "..."}`, and nothing changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use rocketmesh_xds::catalog::Lookup;
use rocketmesh_xds::model::{MetaValue, TopicPolicy};
use rocketmesh_xds::resources::topic_cluster_name;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Traffic, TrafficError};
use crate::admin::{Api, ApiResponse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsReq {
    topic: String,
    weights: BTreeMap<String, u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyReq {
    topic: String,
    policy: Option<TopicPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateReq {
    topic: String,
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicReq {
    topic: String,
}

impl Api for Traffic {
    fn call(
        &self,
        method: Method,
        path: String,
        query: Option<String>,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = ApiResponse> + Send>> {
        // Everything is answered from memory (saves are small, synchronous file writes).
        let answer = self.answer(&method, &path, query.as_deref(), &body);
        Box::pin(async move { answer })
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, TrafficError> {
    serde_json::from_slice(body)
        .map_err(|e| TrafficError::Invalid(format!("bad request body: {e}")))
}

fn topic_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("topic="))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn error(e: &TrafficError) -> ApiResponse {
    let status = match e {
        TrafficError::Invalid(_) => StatusCode::BAD_REQUEST,
        TrafficError::Unknown(_) => StatusCode::NOT_FOUND,
        TrafficError::Conflict(_) => StatusCode::CONFLICT,
        TrafficError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, json!({ "error": e.to_string() }))
}

impl Traffic {
    fn answer(&self, method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> ApiResponse {
        let result: Result<Value, TrafficError> = match (method, path) {
            (&Method::GET, "/api/routes") => Ok(self.routes(topic_param(query))),
            (&Method::GET, "/api/migrations") => {
                let topic = topic_param(query);
                Ok(json!({
                    "migrations": self
                        .migrations()
                        .into_iter()
                        .filter(|m| topic.as_ref().is_none_or(|t| *t == m.topic))
                        .collect::<Vec<_>>()
                }))
            }
            (&Method::POST, "/api/weights") => parse::<WeightsReq>(body)
                .and_then(|r| self.set_weights(&r.topic, r.weights))
                .map(|p| json!({ "policy": p })),
            (&Method::POST, "/api/policy") => parse::<PolicyReq>(body)
                .and_then(|r| self.set_policy(&r.topic, r.policy))
                .map(|p| json!({ "policy": p })),
            (&Method::POST, "/api/migrate") => parse::<MigrateReq>(body)
                .and_then(|r| self.start_migration(&r.topic, &r.from, &r.to))
                .map(|m| json!({ "migration": m })),
            (&Method::POST, "/api/abort") => parse::<TopicReq>(body)
                .and_then(|r| self.abort(&r.topic))
                .map(|m| json!({ "migration": m })),
            (
                _,
                "/api/routes" | "/api/migrations" | "/api/weights" | "/api/policy" | "/api/migrate"
                | "/api/abort",
            ) => {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({ "error": format!("{method} {path} is not allowed") }),
                )
            }
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    json!({ "error": format!("no route {path}") }),
                )
            }
        };
        match result {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => error(&e),
        }
    }

    /// What sidecars are told for each topic (or one): the brokers of its cluster as pushed.
    fn routes(&self, topic: Option<String>) -> Value {
        let topics = match topic {
            Some(t) => vec![t],
            None => {
                let mut all = self.catalog.topics();
                all.retain(|t| self.catalog.topic_route(t).is_some());
                all
            }
        };
        let out: Vec<Value> = topics
            .iter()
            .map(|t| {
                let brokers: Vec<Value> = match self.catalog.load_assignment(&topic_cluster_name(t))
                {
                    Lookup::Found(la) => la
                        .value
                        .endpoints
                        .iter()
                        .filter(|e| e.is_master())
                        .map(|e| {
                            let flag = |k: &str| e.lb.get(k) == Some(&MetaValue::Bool(true));
                            json!({
                                "broker": e.broker_name,
                                "address": e.address,
                                "readable": flag("readable"),
                                "writable": flag("writable"),
                                "weight": e.weight,
                                "write_queues": e.write_queue_num,
                                "read_queues": e.read_queue_num,
                            })
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                json!({
                    "topic": t,
                    "registered": self.catalog.topic_route(t).is_some(),
                    "brokers": brokers,
                    "policy": self.catalog.policy(t).map(|p| (*p).clone()),
                    "migration": self.migration(t),
                })
            })
            .collect();
        json!({ "routes": out })
    }
}

/// The API as the admin server takes it.
pub fn handler(t: Arc<Traffic>) -> Arc<dyn Api> {
    t
}
