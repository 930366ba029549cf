#!/usr/bin/env python3
"""Writes ROCKETMQ-binary-header frames into testdata/frames/synthetic-binary/.

No SDK reachable from this machine sends binary headers by default (Java does only with
-Drocketmq.serialize.type=ROCKETMQ), so these frames are built here, independently of the Rust
encoder, straight from the layout in the protocol notes (RocketMQSerializable):
  code int16 | language u8 | version int16 | opaque int32 | flag int32 |
  remarkLen int32 | remark | extLen int32 | { keyLen int16 | key | valLen int32 | val }*
Pop-family codes are written truncated to int16, exactly as Java's `(short) code` does.
Each frame gets a .json file with the fields a decoder must report (code mapped back).

Run: python3 testdata/tools/make_binary_frames.py   (deterministic output)
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "frames", "synthetic-binary")
LANG = {"JAVA": 0, "CPP": 1, "GO": 9}


def header(code, lang, version, opaque, flag, remark, ext):
    wire_code = struct.unpack(">h", struct.pack(">H", code & 0xFFFF))[0]
    rb = remark.encode() if remark else b""
    eb = b"".join(
        struct.pack(">h", len(k.encode())) + k.encode() + struct.pack(">i", len(v.encode())) + v.encode()
        for k, v in ext
    )
    return (struct.pack(">hBhii", wire_code, LANG[lang], version, opaque, flag)
            + struct.pack(">i", len(rb)) + rb + struct.pack(">i", len(eb)) + eb)


def frame(hdr, body=b""):
    return struct.pack(">ii", 4 + len(hdr) + len(body), (1 << 24) | len(hdr)) + hdr + body


def write(name, code, lang, version, opaque, flag, remark, ext, body=b""):
    data = frame(header(code, lang, version, opaque, flag, remark, ext), body)
    with open(os.path.join(OUT, name + ".hex"), "w") as f:
        f.write(data.hex() + "\n")
    doc = {
        "origin": "synthetic: testdata/tools/make_binary_frames.py (layout from the protocol notes)",
        "serialize": 1,
        "frame_len": len(data),
        "header": {"code": code, "language": lang, "version": version, "opaque": opaque,
                   "flag": flag, "remark": remark, "extFields": dict(ext) if ext else None},
        "body_len": len(body),
        "body_utf8": body.decode("utf-8", "replace"),
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")


os.makedirs(OUT, exist_ok=True)
# The HEART_BEAT example of protocol notes 1.4: JAVA, version 401, opaque 1, nothing else.
write("java_heartbeat_minimal.req", 34, "JAVA", 401, 1, 0, None, [])
write("java_send_message_v2.req", 310, "JAVA", 407, 17, 0, None, [
    ("a", "PG"), ("b", "TopicA"), ("c", "TBW102"), ("d", "4"), ("e", "1"), ("f", "0"),
    ("g", "1712345678901"), ("h", "0"),
    ("i", "TAGS\u0001TagA\u0002UNIQ_KEY\u00017F0000010001000000000000000A0001\u0002WAIT\u0001true\u0002"),
    ("j", "0"), ("k", "false"), ("m", "false"), ("n", "broker-a")], b"hello binary")
write("java_send_message_v2_oneway.req", 310, "JAVA", 407, 18, 2, None, [
    ("a", "PG"), ("b", "TopicA"), ("c", "TBW102"), ("d", "4"), ("e", "0"), ("f", "0"),
    ("g", "1712345678902"), ("h", "0"), ("m", "false")], b"x")
# Pop family: 200050 travels as 3442, 200051 as 3443, 200053 as 3445, 200151 as 3543.
write("java_pop_message_truncated_code.req", 200050, "JAVA", 433, 21, 0, None, [
    ("consumerGroup", "CG"), ("topic", "TopicA"), ("queueId", "-1"), ("maxMsgNums", "32"),
    ("invisibleTime", "60000"), ("pollTime", "15000"), ("bornTime", "1712345678901"),
    ("initMode", "0"), ("expType", "TAG"), ("exp", "*"), ("bname", "broker-a")])
write("java_ack_message_truncated_code.req", 200051, "JAVA", 433, 22, 0, None, [
    ("consumerGroup", "CG"), ("topic", "TopicA"), ("queueId", "3"), ("offset", "1203"),
    ("extraInfo", "1200 1712345678901 60000 5 0 broker-a 3 1203"), ("bname", "broker-a")])
write("java_change_invisible_truncated_code.req", 200053, "JAVA", 433, 23, 0, None, [
    ("consumerGroup", "CG"), ("topic", "TopicA"), ("queueId", "3"), ("offset", "1203"),
    ("extraInfo", "1200 1712345678901 60000 5 0 broker-a 3 1203"), ("invisibleTime", "10000")])
write("java_batch_ack_truncated_code.req", 200151, "JAVA", 433, 24, 0, None, [],
      json.dumps({"acks": [{"b": "BQI=", "c": "CG", "it": 60000, "pt": 1712345678901, "q": 3,
                            "r": "0", "rq": 5, "so": 1200, "t": "TopicA"}],
                  "brokerName": "broker-a"}, separators=(",", ":")).encode())
write("java_pull_response_not_found.resp", 19, "JAVA", 407, 25, 1, "OFFSET_OVERFLOW_ONE", [
    ("suggestWhichBrokerId", "0"), ("nextBeginOffset", "42"), ("minOffset", "0"),
    ("maxOffset", "42")])
write("go_get_route_info.req", 105, "GO", 0, 26, 0, None, [("topic", "TopicGo")])
write("java_unicode_remark.resp", 1, "JAVA", 407, 27, 1, "系统繁忙 \u0001 busy", [])
