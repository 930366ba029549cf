//! One Kubernetes object: where its pod template is, whether it may be injected, and the
//! injection itself (on `serde_yaml_ng::Value`, so fields rocketmesh does not know are kept, in
//! their order).

use serde_yaml_ng::{Mapping, Value};

use super::sidecar::{
    injected_containers, status_annotations, InjectOptions, APP_NAMESRV, INIT_NAME,
    INJECT_ANNOTATION, NAMESRV_ENV, PROXY_NAME, STATUS_ANNOTATION,
};

/// Why one object cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It already carries the sidecar (`evidence` says how that was seen).
    AlreadyInjected { evidence: String },
    /// `hostNetwork: true`: the rules would redirect the node's own connections.
    HostNetwork,
    /// A field is missing or of the wrong type (`what` names it).
    Malformed { what: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AlreadyInjected { evidence } => write!(
                f,
                "already injected ({evidence}); inject the original manifest, or leave this one out"
            ),
            Refusal::HostNetwork => write!(
                f,
                "uses hostNetwork: the iptables rules would redirect the node's connections; \
                 annotate it {INJECT_ANNOTATION}: \"false\" to leave it out"
            ),
            Refusal::Malformed { what } => write!(f, "malformed: {what}"),
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added; `notes` are warnings for the user.
    Injected { notes: Vec<String> },
    /// `rocketmesh.io/inject: "false"`: left unchanged.
    OptedOut,
    /// A workload kind of an API group rocketmesh does not know: left unchanged.
    UnknownGroup { api_version: String },
    /// Not a workload (Service, ConfigMap...): left unchanged.
    NotAWorkload,
}

/// Where a kind keeps its pod template (metadata + spec), from the object's root; empty for a
/// Pod, which is its own template.
pub fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default();
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        ("", "Pod") => Some(&[]),
        _ => None,
    }
}

/// Kinds `rocketmesh inject` knows under some group (used to warn about unknown groups).
const WORKLOAD_KINDS: [&str; 8] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "Pod",
];

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `Kind namespace/name` (or `Kind name`) for messages.
pub fn describe(obj: &Value) -> String {
    let kind = str_at(obj, "kind").unwrap_or("object");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| str_at(m, "name").or_else(|| str_at(m, "generateName")))
        .unwrap_or("(unnamed)");
    match meta.and_then(|m| str_at(m, "namespace")) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn opted_out(meta: Option<&Value>) -> bool {
    let Some(v) = meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECT_ANNOTATION))
    else {
        return false;
    };
    // Annotations are strings; an unquoted `false` (a YAML boolean, which the API server would
    // reject) is read the same way.
    v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("false")) || v.as_bool() == Some(false)
}

fn malformed(what: impl Into<String>) -> Refusal {
    Refusal::Malformed { what: what.into() }
}

/// The mapping under `key`, created empty when absent.
fn child_mapping<'a>(
    parent: &'a mut Mapping,
    key: &str,
    path: &str,
) -> Result<&'a mut Mapping, Refusal> {
    let v = parent
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if v.is_null() {
        *v = Value::Mapping(Mapping::new());
    }
    v.as_mapping_mut()
        .ok_or_else(|| malformed(format!("{path}.{key} is not a mapping")))
}

fn container_names(spec: &Value, field: &str) -> Vec<String> {
    spec.get(field)
        .and_then(Value::as_sequence)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| str_at(c, "name").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Injects `obj` in place, or says why not. The object is only changed when this returns
/// `Outcome::Injected`.
pub fn inject_object(obj: &mut Value, opts: &InjectOptions) -> Result<Outcome, Refusal> {
    let api_version = str_at(obj, "apiVersion").unwrap_or_default().to_owned();
    let Some(kind) = str_at(obj, "kind").map(str::to_owned) else {
        return Err(malformed("no kind"));
    };
    let Some(path) = template_path(&api_version, &kind) else {
        if WORKLOAD_KINDS.contains(&kind.as_str()) {
            return Ok(Outcome::UnknownGroup { api_version });
        }
        return Ok(Outcome::NotAWorkload);
    };
    let mut dotted = String::new();
    let mut template = &*obj;
    for key in path {
        dotted = if dotted.is_empty() {
            (*key).to_owned()
        } else {
            format!("{dotted}.{key}")
        };
        template = template
            .get(key)
            .filter(|v| v.is_mapping())
            .ok_or_else(|| malformed(format!("{dotted} is missing or not a mapping")))?;
    }
    if opted_out(obj.get("metadata")) || opted_out(template.get("metadata")) {
        return Ok(Outcome::OptedOut);
    }
    let spec_path = if dotted.is_empty() {
        "spec".to_owned()
    } else {
        format!("{dotted}.spec")
    };
    let spec = template
        .get("spec")
        .filter(|v| v.is_mapping())
        .ok_or_else(|| malformed(format!("{spec_path} is missing or not a mapping")))?;
    check_not_injected(template, spec)?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Refusal::HostNetwork);
    }
    check_containers(spec, &spec_path)?;

    // Every check passed: from here on the object changes.
    let mut template = &mut *obj;
    for key in path {
        // Checked above: each step is a mapping.
        template = template
            .get_mut(key)
            .ok_or_else(|| malformed(format!("{key} vanished")))?;
    }
    let template = template
        .as_mapping_mut()
        .ok_or_else(|| malformed("the pod template is not a mapping"))?;
    let meta_path = if dotted.is_empty() {
        "metadata".to_owned()
    } else {
        format!("{dotted}.metadata")
    };
    let meta = child_mapping(template, "metadata", &dotted)?;
    let annotations = child_mapping(meta, "annotations", &meta_path)?;
    for (k, v) in status_annotations() {
        annotations.insert(Value::from(k), Value::from(v));
    }
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| malformed(format!("{spec_path} is not a mapping")))?;
    add_init_containers(spec, opts);
    let notes = add_namesrv(spec);
    Ok(Outcome::Injected { notes })
}

fn check_not_injected(template: &Value, spec: &Value) -> Result<(), Refusal> {
    if let Some(status) = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(STATUS_ANNOTATION))
    {
        let status = status.as_str().unwrap_or("?");
        return Err(Refusal::AlreadyInjected {
            evidence: format!("pod annotation {STATUS_ANNOTATION}: {status}"),
        });
    }
    for field in ["initContainers", "containers"] {
        if let Some(name) = container_names(spec, field)
            .into_iter()
            .find(|n| n == INIT_NAME || n == PROXY_NAME)
        {
            return Err(Refusal::AlreadyInjected {
                evidence: format!("it has a container named {name} in {field}"),
            });
        }
    }
    Ok(())
}

fn check_containers(spec: &Value, spec_path: &str) -> Result<(), Refusal> {
    let containers = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .filter(|cs| !cs.is_empty())
        .ok_or_else(|| malformed(format!("{spec_path}.containers is missing or empty")))?;
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{spec_path}.containers[{i}]");
        let c = c
            .as_mapping()
            .ok_or_else(|| malformed(format!("{at} is not a mapping")))?;
        for field in ["env", "envFrom"] {
            match c.get(field) {
                None | Some(Value::Null) | Some(Value::Sequence(_)) => {}
                Some(_) => return Err(malformed(format!("{at}.{field} is not a list"))),
            }
        }
    }
    match spec.get("initContainers") {
        None | Some(Value::Null) | Some(Value::Sequence(_)) => Ok(()),
        Some(_) => Err(malformed(format!(
            "{spec_path}.initContainers is not a list"
        ))),
    }
}

/// rocketmesh-init then rocketmesh-proxy, before the application's own init containers: those
/// run with the redirect in place, so the sidecar has to be up for them too.
fn add_init_containers(spec: &mut Mapping, opts: &InjectOptions) {
    let mut list: Vec<Value> = injected_containers(opts).into();
    if let Some(Value::Sequence(existing)) = spec.get_mut("initContainers") {
        list.append(existing);
    }
    let key = Value::from("initContainers");
    if spec.contains_key(&key) {
        spec.insert(key, Value::Sequence(list));
        return;
    }
    // A new field goes where people write it: just before `containers`.
    let old = std::mem::take(spec);
    let mut list = Some(Value::Sequence(list));
    for (k, v) in old {
        if k.as_str() == Some("containers") {
            if let Some(list) = list.take() {
                spec.insert(key.clone(), list);
            }
        }
        spec.insert(k, v);
    }
    if let Some(list) = list {
        spec.insert(key, list);
    }
}

/// `NAMESRV_ADDR=127.0.0.1:9876` for every application container without one. A container that
/// sets it keeps its value (its connections are redirected to the sidecar anyway). A container
/// with `envFrom` is left alone too: those sources may hold NAMESRV_ADDR, and a variable in
/// `env` would override it; a note says so.
fn add_namesrv(spec: &mut Mapping) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(Value::Sequence(containers)) = spec.get_mut("containers") else {
        return notes;
    };
    for c in containers.iter_mut() {
        let Some(c) = c.as_mapping_mut() else {
            continue;
        };
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_owned();
        let has_env_from = c
            .get("envFrom")
            .and_then(Value::as_sequence)
            .is_some_and(|s| !s.is_empty());
        let has_namesrv = c
            .get("env")
            .and_then(Value::as_sequence)
            .is_some_and(|env| env.iter().any(|e| str_at(e, "name") == Some(NAMESRV_ENV)));
        if has_namesrv {
            continue;
        }
        if has_env_from {
            notes.push(format!(
                "container {name}: {NAMESRV_ENV} not added, since it takes variables from \
                 envFrom (which may set it); its own nameserver address is redirected to the \
                 sidecar, or set {NAMESRV_ENV}={APP_NAMESRV}"
            ));
            continue;
        }
        let env = c
            .entry(Value::from("env"))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if env.is_null() {
            *env = Value::Sequence(Vec::new());
        }
        // Checked by check_containers: env is a list (or was absent or null).
        let Some(env) = env.as_sequence_mut() else {
            continue;
        };
        let mut var = Mapping::new();
        var.insert(Value::from("name"), Value::from(NAMESRV_ENV));
        var.insert(Value::from("value"), Value::from(APP_NAMESRV));
        env.push(Value::Mapping(var));
    }
    notes
}
