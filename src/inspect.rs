//! `rocketmesh inspect`: decode hex-encoded Remoting frames and print them, one command a block.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use rocketmesh_filters::codec::codes::request_code;
use rocketmesh_filters::codec::{RemotingCodec, RemotingCommand};
use tokio_util::codec::Decoder;

/// Reads a file (or stdin for `-`) of hex text, whitespace ignored, into bytes.
pub fn read_hex(path: &Path) -> Result<Vec<u8>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex_decode(&compact).with_context(|| format!("{} is not hex", path.display()))
}

fn hex_decode(s: &str) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("invalid hex digit"))
        .collect()
}

/// Decodes every frame in `bytes` and renders them.
pub fn render_frames(bytes: &[u8]) -> Result<String> {
    let mut codec = RemotingCodec::default();
    let mut buf = BytesMut::from(bytes);
    let mut out = String::new();
    while !buf.is_empty() {
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => render(&cmd, &mut out),
            Ok(None) => bail!("{} trailing bytes do not make a whole frame", buf.len()),
            Err(e) if e.is_fatal() => return Err(e).context("undecodable frame"),
            Err(e) => writeln!(out, "!! {e}")?,
        }
    }
    Ok(out)
}

fn render(cmd: &RemotingCommand, out: &mut String) {
    let kind = if cmd.is_response() {
        "response"
    } else if cmd.is_oneway() {
        "oneway request"
    } else {
        "request"
    };
    let name = if cmd.is_response() {
        String::new()
    } else {
        request_code::name(cmd.code())
            .map(|n| format!(" {n}"))
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "{kind} code={}{name} opaque={} flag={} language={} version={} header={:?}",
        cmd.code(),
        cmd.opaque(),
        cmd.flag(),
        cmd.language().name(),
        cmd.version(),
        cmd.serialize_type(),
    );
    if let Some(remark) = cmd.remark().filter(|r| !r.is_empty()) {
        let _ = writeln!(out, "  remark: {remark:?}");
    }
    for (k, v) in cmd.ext().iter() {
        let _ = writeln!(out, "  {k} = {v:?}");
    }
    let body = cmd.body();
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && !"\n\r\t".contains(c)) =>
            {
                let _ = writeln!(out, "  body ({} bytes): {}", body.len(), text.trim_end());
            }
            _ => {
                let shown: String = body.iter().take(48).map(|b| format!("{b:02x}")).collect();
                let more = if body.len() > 48 { "..." } else { "" };
                let _ = writeln!(out, "  body ({} bytes, binary): {shown}{more}", body.len());
            }
        }
    }
}
