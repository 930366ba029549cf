//! `rocketmesh inject -f app.yaml`: prints the workloads with the sidecar added, offline, like
//! `istioctl kube-inject` / `linkerd inject`.
//!
//! * Input: one or more YAML documents (`---`). Deployment, StatefulSet, DaemonSet, ReplicaSet
//!   (`apps`), Job and CronJob (`batch`), ReplicationController and Pod (core) are injected;
//!   a `List` (what `kubectl get -o yaml` prints) has its items injected; every other object
//!   (Service, ConfigMap...) and every document left unchanged is printed exactly as it was
//!   read, comments included. An injected document is printed from the parsed YAML: its
//!   fields keep their order, its comments are lost.
//! * What is added ([`sidecar`]): the init containers `rocketmesh-init` (iptables) and
//!   `rocketmesh-proxy` (a native sidecar), first in `initContainers`; the annotations
//!   `rocketmesh.io/status: injected` and `rocketmesh.io/version` on the pod template; and
//!   `NAMESRV_ADDR=127.0.0.1:9876` in every application container that has no NAMESRV_ADDR of
//!   its own and no `envFrom` (which might hold one).
//! * Refused, with nothing printed and every reason listed: a workload that already has the
//!   sidecar (the status annotation, or a container named rocketmesh-init/-proxy), a
//!   hostNetwork pod, malformed YAML (document index and line), a document that is not an
//!   object with a `kind`, a workload without containers. A file of which only some documents
//!   are already injected is refused whole: printing the rest would apply half a change.
//! * Left unchanged: `rocketmesh.io/inject: "false"` on the workload or its pod template, a
//!   workload kind under an API group other than the ones above (a warning says so).

pub mod sidecar;
pub mod workload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use clap::Args;
use serde_yaml_ng::Value;

pub use sidecar::{InjectOptions, PullPolicy};
use workload::{Outcome, Refusal};

/// `rocketmesh inject`.
#[derive(Debug, Args)]
#[command(after_help = "\
Adds to each Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, ReplicationController
and Pod (also inside a List): the init container rocketmesh-init (iptables redirect of ports
9876,10911 to the sidecar, NET_ADMIN), the native sidecar rocketmesh-proxy (init container with
restartPolicy: Always; Kubernetes 1.29+), the pod annotation rocketmesh.io/status: injected, and
NAMESRV_ADDR=127.0.0.1:9876 in application containers that have no NAMESRV_ADDR and no envFrom.
Other objects are printed unchanged. rocketmesh.io/inject: \"false\" on a workload or its pod
template leaves it out. An already injected workload is refused (nothing is printed).
  rocketmesh inject -f app.yaml | kubectl apply -f -")]
pub struct InjectArgs {
    /// The manifest to read (`-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Image of the injected containers (it must hold `rocketmesh` and iptables).
    #[arg(long, default_value = sidecar::DEFAULT_IMAGE)]
    pub image: String,
    /// Pull policy of the injected containers (IfNotPresent: images built locally, no registry).
    #[arg(long, value_enum, default_value_t = PullPolicy::IfNotPresent)]
    pub image_pull_policy: PullPolicy,
    /// The control plane's xDS address the sidecar follows.
    #[arg(long, default_value = sidecar::DEFAULT_XDS, value_parser = crate::cli::parse_server_addr)]
    pub xds: String,
}

impl InjectArgs {
    pub fn options(&self) -> InjectOptions {
        InjectOptions {
            image: self.image.clone(),
            pull_policy: self.image_pull_policy,
            xds: self.xds.clone(),
        }
    }
}

/// What `inject` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The documents, injected or as they were read.
    pub output: String,
    /// The objects injected (`document N: Kind namespace/name`).
    pub injected: Vec<String>,
    /// Warnings and notes for the user (opted out, unknown API group, NAMESRV_ADDR not added).
    pub notes: Vec<String>,
}

/// Why one document cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not YAML; `message` is the parser's, with line numbers of the whole input.
    Yaml { message: String },
    /// YAML, but not a Kubernetes object (a mapping with a `kind`).
    NotAnObject { found: String },
    /// An object that cannot be injected.
    Refused { object: String, refusal: Refusal },
}

/// One refused document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based index of the document in the input.
    pub document: usize,
    /// 1-based line of the document's first line of content.
    pub line: usize,
    pub problem: Problem,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {} (line {}): ", self.document, self.line)?;
        match &self.problem {
            Problem::Yaml { message } => write!(f, "invalid YAML: {message}"),
            Problem::NotAnObject { found } => write!(
                f,
                "not a Kubernetes object (expected a mapping with apiVersion and kind, found {found})"
            ),
            Problem::Refused { object, refusal } => write!(f, "{object}: {refusal}"),
        }
    }
}

/// `rocketmesh inject` refused its input; nothing should be printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: nothing injected, {} of the documents cannot be:{}", errors.len(), list(errors))]
pub struct InjectError {
    /// The input's name in messages (a file name, or `stdin`).
    pub source_name: String,
    pub errors: Vec<DocumentError>,
}

fn list(errors: &[DocumentError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

/// One YAML document of the input: its text (from its `---` line, if any, to the next one).
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line where `text` starts.
    first_line: usize,
    /// Whether `text` starts with a `---` line.
    marker: bool,
}

/// A line that starts a document: `---` at column 0, alone or followed by blanks or content.
fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Splits `input` where YAML documents start. Document markers are only recognised at column
/// 0, where a block scalar's content cannot be, so this agrees with the parser.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        if is_marker(line) && offset > start {
            chunks.push(Chunk {
                text: &input[start..offset],
                first_line: start_line,
                marker: is_marker(&input[start..]),
            });
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        text: &input[start..],
        first_line: start_line,
        marker: is_marker(&input[start..]),
    });
    chunks
}

/// The 1-based line of the chunk's first line of content, or None when it holds only blanks,
/// comments and markers.
fn content_line(chunk: &Chunk<'_>) -> Option<usize> {
    chunk.text.lines().enumerate().find_map(|(i, line)| {
        let t = line.trim();
        let t = if is_marker(line) { t[3..].trim() } else { t };
        (!t.is_empty() && !t.starts_with('#') && t != "...").then_some(chunk.first_line + i)
    })
}

fn value_kind(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping without kind".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Injects every workload of `input` (see the module documentation). `source_name` names the
/// input in messages.
pub fn inject(
    source_name: &str,
    input: &str,
    opts: &InjectOptions,
) -> Result<Injection, InjectError> {
    let mut out = Injection {
        output: String::with_capacity(input.len() * 2),
        injected: Vec::new(),
        notes: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut document = 0;
    for chunk in split_documents(input) {
        if chunk.text.is_empty() {
            continue;
        }
        document += 1;
        let Some(line) = content_line(&chunk) else {
            out.output.push_str(chunk.text);
            continue;
        };
        let fail = |problem| DocumentError {
            document,
            line,
            problem,
        };
        // Blank lines in front so the parser's line numbers are those of the whole input.
        let padded = format!("{}{}", "\n".repeat(chunk.first_line - 1), chunk.text);
        let mut value: Value = match serde_yaml_ng::from_str(&padded) {
            Ok(v) => v,
            Err(e) => {
                errors.push(fail(Problem::Yaml {
                    message: e.to_string(),
                }));
                continue;
            }
        };
        if let Err(e) = value.apply_merge() {
            errors.push(fail(Problem::Yaml {
                message: e.to_string(),
            }));
            continue;
        }
        if value.is_null() {
            out.output.push_str(chunk.text);
            continue;
        }
        let here = format!("document {document}");
        let changed = match inject_document(&mut value, &here, opts, &mut out) {
            Ok(changed) => changed,
            Err(problem) => {
                errors.push(fail(problem));
                continue;
            }
        };
        if !changed {
            out.output.push_str(chunk.text);
            continue;
        }
        if chunk.marker {
            out.output.push_str("---\n");
        }
        match serde_yaml_ng::to_string(&value) {
            Ok(text) => out.output.push_str(&text),
            Err(e) => errors.push(fail(Problem::Yaml {
                message: format!("cannot print the injected document: {e}"),
            })),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(InjectError {
            source_name: source_name.to_owned(),
            errors,
        })
    }
}

/// One parsed document (an object or a `List` of them); whether it changed.
fn inject_document(
    value: &mut Value,
    here: &str,
    opts: &InjectOptions,
    out: &mut Injection,
) -> Result<bool, Problem> {
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
    let Some(kind) = kind.filter(|_| value.is_mapping()) else {
        return Err(Problem::NotAnObject {
            found: value_kind(value),
        });
    };
    if kind != "List" {
        return inject_one(value, here, opts, out);
    }
    let Some(items) = value.get_mut("items").and_then(Value::as_sequence_mut) else {
        return Err(Problem::Refused {
            object: "List".into(),
            refusal: Refusal::Malformed {
                what: "items is missing or not a list".into(),
            },
        });
    };
    // Refuse the whole List if any item is refused: check them all on copies first.
    let mut changed_items = Vec::with_capacity(items.len());
    let mut notes = Vec::new();
    let mut injected = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut copy = item.clone();
        let at = format!("{here}, List item {}", i + 1);
        if copy.get("kind").and_then(Value::as_str).is_none() {
            return Err(Problem::NotAnObject {
                found: format!("{} at List item {}", value_kind(&copy), i + 1),
            });
        }
        let mut sink = Injection {
            output: String::new(),
            injected: Vec::new(),
            notes: Vec::new(),
        };
        let changed = inject_one(&mut copy, &at, opts, &mut sink).map_err(|p| match p {
            Problem::Refused { object, refusal } => Problem::Refused {
                object: format!("List item {}, {object}", i + 1),
                refusal,
            },
            other => other,
        })?;
        notes.extend(sink.notes);
        injected.extend(sink.injected);
        changed_items.push(changed.then_some(copy));
    }
    let mut any = false;
    for (item, new) in items.iter_mut().zip(changed_items) {
        if let Some(new) = new {
            *item = new;
            any = true;
        }
    }
    out.notes.extend(notes);
    out.injected.extend(injected);
    Ok(any)
}

fn inject_one(
    obj: &mut Value,
    here: &str,
    opts: &InjectOptions,
    out: &mut Injection,
) -> Result<bool, Problem> {
    let object = workload::describe(obj);
    match workload::inject_object(obj, opts) {
        Ok(Outcome::Injected { notes }) => {
            out.notes
                .extend(notes.into_iter().map(|n| format!("{here}: {object}: {n}")));
            out.injected.push(format!("{here}: {object}"));
            Ok(true)
        }
        Ok(Outcome::OptedOut) => {
            out.notes.push(format!(
                "{here}: {object}: left unchanged ({}: \"false\")",
                sidecar::INJECT_ANNOTATION
            ));
            Ok(false)
        }
        Ok(Outcome::UnknownGroup { api_version }) => {
            out.notes.push(format!(
                "{here}: {object}: left unchanged (apiVersion {api_version:?} is not a \
                 Kubernetes workload API rocketmesh knows)"
            ));
            Ok(false)
        }
        Ok(Outcome::NotAWorkload) => Ok(false),
        Err(refusal) => Err(Problem::Refused { object, refusal }),
    }
}
