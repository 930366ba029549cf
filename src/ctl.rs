//! `rocketmesh ctl`: drives the control plane's traffic API (`control-plane --admin ADDR`,
//! `/api/...`, see `control_plane::traffic::api`) over plain HTTP/1.1 on loopback.
//!
//! ```text
//! rocketmesh ctl --control-plane 127.0.0.1:15002 routes [TOPIC]
//! rocketmesh ctl --control-plane 127.0.0.1:15002 weights TOPIC broker-a=90 broker-b=10
//! rocketmesh ctl --control-plane 127.0.0.1:15002 migrate TOPIC --from broker-a --to broker-b [--wait]
//! rocketmesh ctl --control-plane 127.0.0.1:15002 migrations
//! rocketmesh ctl --control-plane 127.0.0.1:15002 abort TOPIC
//! ```
//!
//! `--json` prints the API's answer as is. An answer other than 200 prints the error and exits
//! non-zero.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Largest answer read (the API's answers are small; routes of many topics are the largest).
const MAX_ANSWER: u64 = 16 << 20;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control plane's admin address (`control-plane --admin`).
    #[arg(long = "control-plane", default_value = "127.0.0.1:15002")]
    pub control_plane: SocketAddr,
    /// Print the API's JSON answers instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of one request.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Topics' brokers as sidecars are told (readable, writable, weight), policy, migration.
    Routes { topic: Option<String> },
    /// Set a topic's write weights: `broker=weight`...; brokers not named take no writes.
    Weights {
        topic: String,
        #[arg(required = true, value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Move a topic from one broker to another (see ARCHITECTURE.md, "Traffic management").
    Migrate {
        topic: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Wait until the migration ends (prints its progress), at most this long.
        #[arg(long, num_args = 0..=1, default_missing_value = "10m", value_parser = crate::cli::parse_duration)]
        wait: Option<Duration>,
    },
    /// Every migration with its state and what remains per group.
    Migrations,
    /// Abort a topic's migration (the source takes the writes again).
    Abort { topic: String },
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (b, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected broker=weight"))?;
    let w = w
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number"))?;
    if b.is_empty() {
        return Err(format!("{s:?}: empty broker name"));
    }
    Ok((b.to_owned(), w))
}

/// Runs one `ctl` command, printing to stdout; the exit code is the caller's to decide.
pub fn run(args: &CtlArgs) -> anyhow::Result<()> {
    let call = |method: &str, path: &str, body: Option<Value>| {
        request(args.control_plane, method, path, body, args.timeout)
    };
    match &args.command {
        CtlCommand::Routes { topic } => {
            let path = match topic {
                Some(t) => format!("/api/routes?topic={t}"),
                None => "/api/routes".into(),
            };
            let v = call("GET", &path, None)?;
            print(args, &v, routes_text)
        }
        CtlCommand::Weights { topic, weights } => {
            let weights: BTreeMap<&str, u32> =
                weights.iter().map(|(b, w)| (b.as_str(), *w)).collect();
            let v = call(
                "POST",
                "/api/weights",
                Some(json!({ "topic": topic, "weights": weights })),
            )?;
            print(args, &v, |v| format!("{topic}: policy {}\n", v["policy"]))
        }
        CtlCommand::Migrate {
            topic,
            from,
            to,
            wait,
        } => {
            let v = call(
                "POST",
                "/api/migrate",
                Some(json!({ "topic": topic, "from": from, "to": to })),
            )?;
            print(args, &v, |v| migration_line(&v["migration"]))?;
            let Some(limit) = wait else { return Ok(()) };
            let deadline = Instant::now() + *limit;
            let mut last = String::new();
            loop {
                let v = call("GET", &format!("/api/migrations?topic={topic}"), None)?;
                let m = &v["migrations"][0];
                let line = migration_line(m);
                if line != last {
                    print(args, m, migration_line)?;
                    last = line;
                }
                match m["state"].as_str() {
                    Some("done") => return Ok(()),
                    Some("aborted" | "failed") => {
                        bail!("the migration of {topic} ended {}", m["state"])
                    }
                    _ if Instant::now() >= deadline => bail!("still migrating after {limit:?}"),
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
        CtlCommand::Migrations => {
            let v = call("GET", "/api/migrations", None)?;
            print(args, &v, |v| {
                let list = v["migrations"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return "no migrations\n".into();
                }
                list.iter().map(migration_line).collect()
            })
        }
        CtlCommand::Abort { topic } => {
            let v = call("POST", "/api/abort", Some(json!({ "topic": topic })))?;
            print(args, &v, |v| migration_line(&v["migration"]))
        }
    }
}

fn print(args: &CtlArgs, v: &Value, text: impl Fn(&Value) -> String) -> anyhow::Result<()> {
    let out = if args.json {
        format!("{}\n", serde_json::to_string(v)?)
    } else {
        text(v)
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn migration_line(m: &Value) -> String {
    let remaining: Vec<String> = m["remaining"]
        .as_object()
        .map(|o| o.iter().map(|(g, n)| format!("{g}={n}")).collect())
        .unwrap_or_default();
    let mut line = format!(
        "{}: {} -> {} {}",
        m["topic"].as_str().unwrap_or("?"),
        m["from"].as_str().unwrap_or("?"),
        m["to"].as_str().unwrap_or("?"),
        m["state"].as_str().unwrap_or("?"),
    );
    if !remaining.is_empty() {
        line.push_str(&format!(" remaining {}", remaining.join(" ")));
    }
    if let Some(e) = m["last_error"].as_str() {
        line.push_str(&format!(" (last error: {e})"));
    }
    line.push('\n');
    line
}

fn routes_text(v: &Value) -> String {
    let mut out = String::new();
    for r in v["routes"].as_array().into_iter().flatten() {
        out.push_str(&format!("{}\n", r["topic"].as_str().unwrap_or("?")));
        for b in r["brokers"].as_array().into_iter().flatten() {
            let rw = format!(
                "{}{}",
                if b["readable"] == true { "r" } else { "-" },
                if b["writable"] == true { "w" } else { "-" }
            );
            let weight = b["weight"]
                .as_u64()
                .map(|w| format!(" weight {w}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} {} {rw}{weight}\n",
                b["broker"].as_str().unwrap_or("?"),
                b["address"].as_str().unwrap_or("?"),
            ));
        }
        if !r["migration"].is_null() {
            out.push_str(&format!("  migration {}", migration_line(&r["migration"])));
        }
    }
    out
}

/// One HTTP/1.1 request (`Connection: close`); the JSON answer when 200, else its error.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the control plane's admin server at {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .context("the admin server's answer has no header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the admin server's answer has no status")?;
    let value: Value = serde_json::from_str(payload.trim()).with_context(|| {
        format!("{method} {path}: answer {status} is not JSON (is this a control plane started with --admin?)")
    })?;
    if status != 200 {
        bail!(
            "{method} {path}: {status}: {}",
            value["error"].as_str().unwrap_or("(no error text)")
        );
    }
    Ok(value)
}
