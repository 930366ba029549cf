#!/usr/bin/env python3
# Part of examples/bench (run by memory.sh): prints figures, asserts nothing.
"""sidecar_rss.py SIDECAR PID BROKER CONNECTIONS TOPICS

The resident set of the process PID (a sidecar listening at SIDECAR) (1) holding TOPICS topics:
each is created at BROKER (UPDATE_AND_CREATE_TOPIC), then looked up through the sidecar
(GET_ROUTEINFO_BY_TOPIC) until it answers with a route, so the sidecar holds its xDS resources;
(2) then with CONNECTIONS idle client connections, each of which sent one request first, as an
SDK's first heartbeat does, and got its answer; (3) after they all closed (the peak while they
close is sampled too). Prints one line per figure and a
last JSON line."""
import json
import socket
import struct
import sys
import time

sidecar, pid, broker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n_conns, n_topics = int(sys.argv[4]), int(sys.argv[5])


def addr(a):
    host, port = a.rsplit(":", 1)
    return host, int(port)


def rss_kb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def frame(code, opaque, ext):
    h = json.dumps({"code": code, "language": "JAVA", "version": 401, "opaque": opaque,
                    "flag": 0, "serializeTypeCurrentRPC": "JSON", "extFields": ext}).encode()
    return struct.pack(">II", 4 + len(h), len(h)) + h


def read_frame(s):
    def exact(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise ConnectionError("closed")
            b += chunk
        return b
    length, hlen = struct.unpack(">II", exact(8))
    rest = exact(length - 4)
    return json.loads(rest[:hlen & 0xFFFFFF]), rest[hlen & 0xFFFFFF:]


def call(s, code, ext, opaque=1):
    s.sendall(frame(code, opaque, ext))
    return read_frame(s)


def settle(seconds=3):
    time.sleep(seconds)
    return rss_kb()


out = {}
base = settle(1)
out["rss_start_kib"] = base

# (1) topics held
if n_topics:
    b = socket.create_connection(addr(broker))
    for i in range(n_topics):
        hdr, _ = call(b, 17, {"topic": f"RssTopic{i}", "defaultTopic": "TBW102",
                              "readQueueNums": "4", "writeQueueNums": "4", "perm": "6",
                              "topicFilterType": "SINGLE_TAG", "order": "false"}, i)
        if hdr["code"] != 0:
            sys.exit(f"creating RssTopic{i}: {hdr}")
    b.close()
    before_topics = settle(1)
    s = socket.create_connection(addr(sidecar))
    pending = list(range(n_topics))
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        left = []
        for i in pending:
            hdr, _ = call(s, 105, {"topic": f"RssTopic{i}"}, i)
            if hdr["code"] != 0:
                left.append(i)
        pending = left
        if pending:
            time.sleep(0.5)
    if pending:
        sys.exit(f"{len(pending)} topics still without a route through the sidecar")
    s.close()
    with_topics = settle()
    per_topic = (with_topics - before_topics) / n_topics
    print(f"{n_topics} topics held: RSS {before_topics} -> {with_topics} KiB, "
          f"{per_topic:.2f} KiB per topic")
    out.update(topics=n_topics, rss_topics_kib=with_topics, kib_per_topic=round(per_topic, 2))

# (2) idle connections, from the RSS with the topics held
base = settle(1)
socks = []
heartbeat = {}  # an empty heartbeat: answered (or refused) by the sidecar itself
for i in range(n_conns):
    s = socket.create_connection(addr(sidecar))
    s.sendall(frame(34, i, heartbeat))
    socks.append(s)
for s in socks:
    s.settimeout(10)
    read_frame(s)
with_conns = settle()
per_conn = (with_conns - base) / max(n_conns, 1)
print(f"{n_conns} idle connections: RSS {base} -> {with_conns} KiB, {per_conn:.2f} KiB per connection")
out.update(connections=n_conns, rss_connections_kib=with_conns, kib_per_connection=round(per_conn, 2))
for s in socks:
    s.close()
socks = []
peak = 0
for _ in range(30):
    peak = max(peak, rss_kb())
    time.sleep(0.1)
after_close = settle()
print(f"while they closed: RSS peaked at {peak} KiB or more (sampled every 100 ms)")
out["rss_close_peak_kib"] = peak
print(f"after closing them: RSS {after_close} KiB")
out["rss_after_close_kib"] = after_close

print(json.dumps(out))
