#!/usr/bin/env python3
"""Independent check of rocketmesh's delta ADS server with Envoy's own generated protos.

Uses grpcio and xds-protos (envoyproxy/data-plane-api generated code) only, so a mismatch with
what Envoy-compatible clients expect shows up here even if the Rust client and server agree.

Protocol with the harness (xds/tests/python_protocol.rs): the script prints "CHANGE" on a line of
its own when it wants the harness to change the catalog, then waits for "CHANGED" on stdin.
The expected catalog content comes as JSON in --expect:

    {"route_config": "rocketmq", "topic": "TopicA", "second_topic": "TopicB",
     "unknown_topic": "NoSuchTopic",
     "brokers": [{"broker_name", "cluster_name", "addr", "perm", "read_queue_num",
                  "write_queue_num"}],          # the topic's brokers (all masters)
     "brokers_after": [...]}                   # the same after the harness's change

Exits non-zero with a message on the first mismatch; prints "OK" when everything matched.
"""

import argparse
import json
import queue
import re
import sys
import threading

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

VHOST_TYPE = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROCKETMQ_META = "envoy.filters.network.rocketmq_proxy"
LB_META = "envoy.lb"
ROCKETMQ_KEYS = {
    "broker_name",
    "broker_id",
    "cluster_name",
    "perm",
    "read_queue_num",
    "write_queue_num",
}
SEND_CODES = ["10", "310", "320"]
CONSUME_CODES = ["11", "200050"]

RESPONSE_TIMEOUT = 5.0
QUIET = 0.5


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def check_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def log(msg):
    print(f"ads_check: {msg}", file=sys.stderr, flush=True)


class Stream:
    """One DeltaAggregatedResources stream; responses are read by a thread into a queue."""

    _seen_nonces = set()

    def __init__(self, stub, name):
        self.name = name
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.last_system_version = -1
        self.call = stub.DeltaAggregatedResources(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for resp in self.call:
                self.responses.put(("response", resp))
            self.responses.put(("end", None))
        except grpc.RpcError as e:
            self.responses.put(("error", e))

    def send(self, **fields):
        self.requests.put(discovery_pb2.DeltaDiscoveryRequest(**fields))

    def recv(self, what, timeout=RESPONSE_TIMEOUT):
        try:
            kind, value = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise CheckFailed(f"{self.name}: no response within {timeout}s ({what})")
        if kind != "response":
            raise CheckFailed(f"{self.name}: stream {kind} while waiting for {what}: {value}")
        check(value.nonce != "", f"{self.name}: {what}: empty nonce")
        check(value.nonce not in Stream._seen_nonces, f"{what}: nonce {value.nonce!r} reused")
        Stream._seen_nonces.add(value.nonce)
        check(
            value.system_version_info.isdigit(),
            f"{what}: system_version_info {value.system_version_info!r} is not a revision",
        )
        rev = int(value.system_version_info)
        check(
            rev >= self.last_system_version,
            f"{what}: system_version_info went back from {self.last_system_version} to {rev}",
        )
        self.last_system_version = rev
        return value

    def quiet(self, what, seconds=QUIET):
        try:
            kind, value = self.responses.get(timeout=seconds)
        except queue.Empty:
            return
        raise CheckFailed(f"{self.name}: expected nothing ({what}), got {kind}: {value}")

    def ack(self, resp):
        self.send(type_url=resp.type_url, response_nonce=resp.nonce)

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def unpack(resource, type_url, msg_cls, what):
    check_eq(resource.resource.type_url, type_url, f"{what}: Any type_url")
    msg = msg_cls()
    check(resource.resource.Unpack(msg), f"{what}: Any does not unpack as {msg_cls.__name__}")
    return msg


def struct_dict(s):
    return {k: s.fields[k] for k in s.fields}


def regex_of(header, what):
    which = header.WhichOneof("header_match_specifier")
    if which == "string_match":
        check_eq(
            header.string_match.WhichOneof("match_pattern"),
            "safe_regex",
            f"{what}: string_match pattern",
        )
        return header.string_match.safe_regex.regex
    if which == "safe_regex_match":
        return header.safe_regex_match.regex
    raise CheckFailed(f"{what}: header matcher is {which}, want a safe regex")


def check_vhost(resp, name, topic):
    """Checks a VirtualHost response field by field; returns (version, cluster name)."""
    check_eq(resp.type_url, VHOST_TYPE, f"{name}: type_url")
    check_eq(list(resp.removed_resources), [], f"{name}: removed_resources")
    check_eq([r.name for r in resp.resources], [name], f"{name}: resource names")
    res = resp.resources[0]
    check(res.version != "", f"{name}: empty resource version")
    vh = unpack(res, VHOST_TYPE, route_components_pb2.VirtualHost, name)
    check_eq(vh.name, name, f"{name}: VirtualHost.name")
    check_eq(list(vh.domains), [topic], f"{name}: domains")
    check_eq([r.name for r in vh.routes], ["send", "consume", "default"], f"{name}: routes")
    clusters = set()
    expect = {
        "send": (SEND_CODES, "writable"),
        "consume": (CONSUME_CODES, "readable"),
        "default": (None, None),
    }
    for route in vh.routes:
        what = f"{name}: route {route.name}"
        codes, subset_key = expect[route.name]
        check_eq(route.WhichOneof("action"), "route", f"{what}: action")
        action = route.route
        check_eq(action.WhichOneof("cluster_specifier"), "cluster", f"{what}: cluster_specifier")
        clusters.add(action.cluster)
        headers = list(route.match.headers)
        if codes is None:
            check_eq(headers, [], f"{what}: headers")
            check(not action.HasField("metadata_match"), f"{what}: unexpected metadata_match")
            continue
        check_eq([h.name for h in headers], ["code"], f"{what}: header names")
        check(not headers[0].invert_match, f"{what}: inverted header match")
        pattern = regex_of(headers[0], what)
        for code in codes:
            check(re.fullmatch(pattern, code), f"{what}: regex {pattern!r} does not match {code}")
        for code in ["1", "12", "34", "100"]:
            check(not re.fullmatch(pattern, code), f"{what}: regex {pattern!r} matches {code}")
        fm = action.metadata_match.filter_metadata
        check_eq(sorted(fm.keys()), [LB_META], f"{what}: metadata_match namespaces")
        subset = struct_dict(fm[LB_META])
        check_eq(sorted(subset.keys()), [subset_key], f"{what}: metadata_match keys")
        check_eq(subset[subset_key].WhichOneof("kind"), "bool_value", f"{what}: subset value kind")
        check(subset[subset_key].bool_value, f"{what}: subset {subset_key} is not true")
    check_eq(len(clusters), 1, f"{name}: routes name one cluster")
    cluster = clusters.pop()
    check(cluster != "", f"{name}: empty cluster name")
    return res.version, cluster


def number(value, what):
    check_eq(value.WhichOneof("kind"), "number_value", f"{what}: value kind")
    return int(value.number_value)


def check_cluster(resp, name, brokers):
    """Checks a Cluster response against the expected brokers; returns the version."""
    check_eq(resp.type_url, CLUSTER_TYPE, f"{name}: type_url")
    check_eq(list(resp.removed_resources), [], f"{name}: removed_resources")
    check_eq([r.name for r in resp.resources], [name], f"{name}: resource names")
    res = resp.resources[0]
    check(res.version != "", f"{name}: empty resource version")
    c = unpack(res, CLUSTER_TYPE, cluster_pb2.Cluster, name)
    check_eq(c.name, name, f"{name}: Cluster.name")
    check(c.HasField("lb_subset_config"), f"{name}: no lb_subset_config")
    lsc = c.lb_subset_config
    check_eq(
        lsc.fallback_policy,
        cluster_pb2.Cluster.LbSubsetConfig.NO_FALLBACK,
        f"{name}: lb_subset_config.fallback_policy",
    )
    selectors = [list(s.keys) for s in lsc.subset_selectors]
    for keys in (["writable"], ["readable"]):
        check(keys in selectors, f"{name}: subset selector {keys} missing from {selectors}")
    check_eq(c.load_assignment.cluster_name, name, f"{name}: load_assignment.cluster_name")
    endpoints = [lb for group in c.load_assignment.endpoints for lb in group.lb_endpoints]
    by_addr = {}
    for lb in endpoints:
        sa = lb.endpoint.address.socket_address
        by_addr[f"{sa.address}:{sa.port_value}"] = lb
    check_eq(sorted(by_addr), sorted(b["addr"] for b in brokers), f"{name}: endpoint addresses")
    for b in brokers:
        what = f"{name}: endpoint {b['addr']}"
        fm = by_addr[b["addr"]].metadata.filter_metadata
        check(ROCKETMQ_META in fm, f"{what}: no {ROCKETMQ_META} metadata")
        check(LB_META in fm, f"{what}: no {LB_META} metadata")
        rmq = struct_dict(fm[ROCKETMQ_META])
        check_eq(set(rmq), ROCKETMQ_KEYS, f"{what}: {ROCKETMQ_META} keys")
        check_eq(rmq["broker_name"].string_value, b["broker_name"], f"{what}: broker_name")
        check_eq(rmq["cluster_name"].string_value, b["cluster_name"], f"{what}: cluster_name")
        check_eq(number(rmq["broker_id"], f"{what}: broker_id"), 0, f"{what}: broker_id")
        for key in ("perm", "read_queue_num", "write_queue_num"):
            check_eq(number(rmq[key], f"{what}: {key}"), b[key], f"{what}: {key}")
        lb = struct_dict(fm[LB_META])
        for key in ("role", "broker_name", "broker_id", "readable", "writable"):
            check(key in lb, f"{what}: {LB_META} has no {key}")
        check_eq(lb["role"].string_value, "master", f"{what}: envoy.lb role")
        check_eq(lb["broker_name"].string_value, b["broker_name"], f"{what}: envoy.lb broker_name")
        check_eq(lb["readable"].bool_value, bool(b["perm"] & 4), f"{what}: envoy.lb readable")
        check_eq(lb["writable"].bool_value, bool(b["perm"] & 2), f"{what}: envoy.lb writable")
    return res.version


def wait_for_change(stdin_lines):
    print("CHANGE", flush=True)
    try:
        line = stdin_lines.get(timeout=RESPONSE_TIMEOUT * 2)
    except queue.Empty:
        raise CheckFailed("the harness did not answer CHANGE with CHANGED")
    check_eq(line.strip(), "CHANGED", "harness answer")


def run(stub, expect, stdin_lines):
    rc = expect["route_config"]
    topic = expect["topic"]
    vh_name = f"{rc}/{topic}"
    node = {"id": "python-ads-check", "cluster": "rocketmesh-test"}

    s1 = Stream(stub, "stream 1")
    s1.send(node=node, type_url=VHOST_TYPE, resource_names_subscribe=[vh_name])
    r = s1.recv(f"VirtualHost {vh_name}")
    vh_version, cluster = check_vhost(r, vh_name, topic)
    s1.ack(r)
    log(f"virtual host {vh_name} version {vh_version} routes to {cluster}")

    s1.send(type_url=CLUSTER_TYPE, resource_names_subscribe=[cluster])
    r = s1.recv(f"Cluster {cluster}")
    cluster_version = check_cluster(r, cluster, expect["brokers"])
    s1.ack(r)
    log(f"cluster {cluster} version {cluster_version}")

    unknown = f"{rc}/{expect['unknown_topic']}"
    s1.send(type_url=VHOST_TYPE, resource_names_subscribe=[unknown])
    r = s1.recv(f"removal of {unknown}", timeout=1.0)
    check_eq(r.type_url, VHOST_TYPE, f"{unknown}: type_url")
    check_eq(list(r.resources), [], f"{unknown}: resources")
    check_eq(list(r.removed_resources), [unknown], f"{unknown}: removed_resources")
    s1.ack(r)

    second = f"{rc}/{expect['second_topic']}"
    s1.send(type_url=VHOST_TYPE, resource_names_subscribe=[second])
    r = s1.recv(f"VirtualHost {second}")
    check_vhost(r, second, expect["second_topic"])
    s1.send(
        type_url=VHOST_TYPE,
        response_nonce=r.nonce,
        error_detail=status_pb2.Status(code=3, message="ads_check rejects this on purpose"),
    )
    s1.quiet(f"after the NACK of {second}")
    # Subscribing again to a name whose version was NACKed does not bring it back.
    s1.send(type_url=VHOST_TYPE, resource_names_subscribe=[second])
    s1.quiet(f"re-subscribing {second} after its NACK")
    log("NACK honoured")

    s2 = Stream(stub, "stream 2")
    s2.send(
        node={"id": "python-ads-check-2"},
        type_url=VHOST_TYPE,
        resource_names_subscribe=[vh_name],
        initial_resource_versions={vh_name: vh_version},
    )
    s2.send(
        type_url=CLUSTER_TYPE,
        resource_names_subscribe=[cluster],
        initial_resource_versions={cluster: cluster_version},
    )
    s2.quiet("resources announced in initial_resource_versions")
    log("initial_resource_versions honoured")

    wait_for_change(stdin_lines)
    for stream in (s1, s2):
        got = {}
        for _ in range(2):
            r = stream.recv("push after the change", timeout=2.0)
            check(r.type_url not in got, f"{stream.name}: two pushes of {r.type_url}")
            got[r.type_url] = r
        check_eq(sorted(got), sorted([VHOST_TYPE, CLUSTER_TYPE]), f"{stream.name}: pushed types")
        new_vh_version, new_cluster = check_vhost(got[VHOST_TYPE], vh_name, topic)
        check_eq(new_cluster, cluster, f"{stream.name}: cluster after the change")
        check(new_vh_version != vh_version, f"{stream.name}: VirtualHost version did not change")
        new_cluster_version = check_cluster(got[CLUSTER_TYPE], cluster, expect["brokers_after"])
        check(
            new_cluster_version != cluster_version,
            f"{stream.name}: Cluster version did not change",
        )
        for r in got.values():
            stream.ack(r)
        stream.quiet("after acknowledging the push")
    log("change pushed to both streams")
    s1.close()
    s2.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="host:port of the ADS server")
    parser.add_argument("--expect", required=True, help="expected catalog content (JSON)")
    args = parser.parse_args()
    expect = json.loads(args.expect)

    stdin_lines = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            stdin_lines.put(line)

    threading.Thread(target=read_stdin, daemon=True).start()

    channel = grpc.insecure_channel(args.server)
    try:
        grpc.channel_ready_future(channel).result(timeout=RESPONSE_TIMEOUT)
    except grpc.FutureTimeoutError:
        print(f"ads_check: FAILED: cannot connect to {args.server}", file=sys.stderr)
        return 2
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    try:
        run(stub, expect, stdin_lines)
    except CheckFailed as e:
        print(f"ads_check: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        channel.close()
    print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
