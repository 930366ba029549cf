//! `rocketmesh demo`.
//!
//! The full demo (control plane, two broker nodes, a sidecar and sample traffic in one process)
//! is assembled as those parts land. What exists today is the protocol layer, so the demo walks
//! through a real client session captured from the Apache RocketMQ C++ SDK and decodes every
//! frame with the same codec the sidecar uses.

use anyhow::Result;

use crate::inspect::render_frames;

/// A producer and push consumer session from the C++ SDK (PyPI rocketmq 0.4.4), in order.
const SESSION: &[(&str, &str)] = &[
    (
        "producer asks for the route of its topic",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_get_route_info_by_topic_ok.req.hex"),
    ),
    (
        "the nameserver answers with TopicRouteData",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_get_route_info_by_topic_ok.resp.hex"),
    ),
    (
        "producer sends a message (SEND_MESSAGE, V1 header)",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_send_message_v1.req.hex"),
    ),
    (
        "the broker acknowledges with offsetMsgId, queue and offset",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_send_message_v1.resp.hex"),
    ),
    (
        "push consumer heartbeat (C++ body: enums as ordinals)",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_heartbeat_producer_and_push_consumer.req.hex"),
    ),
    (
        "push consumer pulls queue 0 (ext values as JSON numbers)",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_pull_message_found.req.hex"),
    ),
    (
        "the broker returns two stored message records",
        include_str!("../testdata/frames/cpp-client_vs_rust-server/cpp_pull_message_found.resp.hex"),
    ),
    (
        "a Java Pop request in a binary header: code 200050 travels truncated as 3442",
        include_str!("../testdata/frames/synthetic-binary/java_pop_message_truncated_code.req.hex"),
    ),
];

pub fn run(once: bool) -> Result<()> {
    println!("rocketmesh demo: protocol layer walkthrough");
    println!("(control plane, broker nodes and sidecar join this demo as they are built)\n");
    for (i, (what, hex)) in SESSION.iter().enumerate() {
        let compact: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = (0..compact.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&compact[j..j + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        println!("[{}] {what} ({} bytes)", i + 1, bytes.len());
        print!("{}", render_frames(&bytes)?);
        println!();
    }
    println!(
        "decoded {} real frames; inspect your own with `rocketmesh inspect FILE.hex`",
        SESSION.len()
    );
    if !once {
        println!("(nothing to keep serving yet: exiting)");
    }
    Ok(())
}
