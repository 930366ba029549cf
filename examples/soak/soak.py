#!/usr/bin/env python3
"""Soak: real Apache RocketMQ C++ producers and push consumers (PyPI rocketmq==0.4.4) through two
rocketmesh sidecars to two sync-flush brokers, while the control plane, broker-b and sidecar-2
are restarted (SIGTERM or SIGKILL) at random intervals. Prints figures; see README.md.

    python3 examples/soak/soak.py [--minutes 10] [--seed 1] [--bin PATH] [--venv DIR]

Exit status: 0, or 1 when an acknowledged message was never consumed (lost), 2 on a setup error.
Everything binds 127.0.0.1; every process and the temporary directory are removed on exit.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SDK = "rocketmq==0.4.4"
TOPIC = "SoakTopic"
GROUP = "CG_Soak"
QUEUES = 4  # per broker: 8 virtual queues through a sidecar
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# ----------------------------------------------------------------------------------------------
# Workers: run under the venv's python, one C++ client each; they print lines the parent reads.
# ----------------------------------------------------------------------------------------------

def worker_produce(o):
    from rocketmq.client import Message, Producer, SendStatus
    p = Producer(o["group"], timeout=3000)
    p.set_namesrv_addr(o["namesrv"])
    p.start()
    print("STARTED", flush=True)
    until, interval, prefix = float(o["until"]), float(o["interval"]), o["prefix"]
    i = 0
    while time.time() < until:
        body = "%s-%07d" % (prefix, i)
        i += 1
        m = Message(o["topic"])
        m.set_keys(body)
        m.set_body(body)
        try:
            r = p.send_sync(m)
            if r.status == SendStatus.OK:
                line = "ACK %s" % body
            else:
                line = "FAIL %s status=%s" % (body, SendStatus(r.status).name)
        except Exception as e:  # counted as a failed send
            line = "FAIL %s %s" % (body, str(e).replace("\n", " ")[:200])
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        time.sleep(interval)
    print("DONE", flush=True)
    os._exit(0)  # the client's shutdown can block on a restarting peer; nothing is left to send


def worker_consume(o):
    from rocketmq.client import PushConsumer
    from rocketmq.ffi import dll, _CConsumeStatus
    from rocketmq.exceptions import ffi_check
    lock = threading.Lock()

    def on_message(_consumer, cmsg):
        body = (dll.GetMessageBody(cmsg) or b"").decode("utf-8", "replace")
        with lock:
            sys.stdout.write("GOT %s %.3f\n" % (body, time.time()))
            sys.stdout.flush()
        return _CConsumeStatus.CONSUME_SUCCESS.value

    c = PushConsumer(o["group"])
    c.set_namesrv_addr(o["namesrv"])
    c.set_thread_count(2)
    c.set_message_batch_max_size(1)
    ffi_check(dll.Subscribe(c._handle, o["topic"].encode(), b"*"))
    c._register_callback(on_message)
    c.start()
    print("STARTED", flush=True)
    while not os.path.exists(o["stop_file"]):
        time.sleep(0.2)
    os._exit(0)


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------

def log(msg):
    sys.stdout.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_free(port):
    """Whether a server (which sets SO_REUSEADDR, as rocketmesh does) can bind the port now."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def remoting(addr, code, ext, timeout=3.0):
    """One Remoting request (JSON header) on a fresh connection: (code, body)."""
    host, port = addr.rsplit(":", 1)
    header = json.dumps({"code": code, "language": "JAVA", "version": 401, "opaque": 1,
                         "flag": 0, "extFields": ext}).encode()
    frame = struct.pack(">II", 4 + len(header), len(header)) + header
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(frame)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
    total, hlen = struct.unpack(">II", buf[:8])
    hlen &= 0xFFFFFF
    head = json.loads(buf[8:8 + hlen])
    return head.get("code"), buf[8 + hlen:4 + total]


class Proc:
    """A child process with a role name: started, restarted, stopped, sampled."""

    def __init__(self, name, argv, workdir, env=None, ready_prefix="ready "):
        self.name, self.argv, self.workdir, self.env = name, argv, workdir, env
        self.ready_prefix = ready_prefix
        self.p = None
        self.incarnation = 0
        self.lines = []  # (parent time, line) for workers
        self.lock = threading.Lock()
        self.keep_lines = False
        self.rss_first = None  # (incarnation, KiB)
        self.rss_peak = 0
        self.rss_last = None  # the last sample (a worker that ended keeps its last)

    def start(self, timeout=60.0):
        self.incarnation += 1
        logf = open(os.path.join(self.workdir, "%s.log" % self.name), "ab")
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=logf, env=self.env, cwd=self.workdir)
        logf.close()
        ready = threading.Event()
        p = self.p

        def read():
            for raw in p.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith(self.ready_prefix):
                    ready.set()
                if self.keep_lines:
                    with self.lock:
                        self.lines.append((time.time(), line))
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            raise RuntimeError("%s did not print %r within %.0fs (log: %s.log)"
                               % (self.name, self.ready_prefix, timeout, self.name))

    def take_lines(self):
        with self.lock:
            out, self.lines = self.lines, []
        return out

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, grace=15.0):
        if not self.alive():
            return
        self.p.send_signal(sig)
        try:
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    def rss(self):
        if not self.alive():
            return None
        r = rss_kib(self.p.pid)
        if r is not None:
            self.rss_peak = max(self.rss_peak, r)
            self.rss_last = r
        return r


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = tempfile.mkdtemp(prefix="rocketmesh-soak-")
        self.procs = []
        self.events = []
        self.acked, self.failed, self.fail_reasons = set(), set(), {}
        self.got = {}  # body -> [t...]
        self.deliveries = []  # (t, consumer index)
        self.consumer_lines = [0, 0]

    # --- processes ---

    def rocketmesh(self, name, *argv):
        p = Proc(name, [self.args.bin] + list(argv), self.dir)
        self.procs.append(p)
        return p

    def worker(self, name, mode, **o):
        env = dict(os.environ, HOME=os.path.join(self.dir, "home-" + name))
        os.makedirs(env["HOME"], exist_ok=True)
        argv = [self.args.python, os.path.abspath(__file__), mode]
        for k, v in o.items():
            argv += ["--" + k, str(v)]
        p = Proc(name, argv, self.dir, env=env, ready_prefix="STARTED")
        p.keep_lines = True
        self.procs.append(p)
        return p

    def restart(self, p, sig):
        t0 = time.time()
        p.stop(sig)
        down = time.time() - t0
        for attempt in range(3):
            # Fixed ports: bind again once the stopped process has let go of them.
            for port in getattr(p, "ports", []):
                end = time.time() + 15
                while not port_free(port) and time.time() < end:
                    time.sleep(0.1)
            try:
                p.start()
                break
            except RuntimeError as e:
                log("%s (attempt %d)" % (e, attempt + 1))
                p.stop(signal.SIGKILL)
        else:
            raise RuntimeError("%s did not come back after 3 attempts" % p.name)
        ready_at = time.time()
        self.events.append({"t": round(t0 - self.t0, 1), "process": p.name,
                            "signal": signal.Signals(sig).name, "stop_s": round(down, 2),
                            "ready_s": round(ready_at - t0, 2), "ready_at": ready_at})
        log("restarted %s (%s): down %.1fs, ready after %.1fs"
            % (p.name, signal.Signals(sig).name, down, ready_at - t0))

    def setup(self):
        a = self.args
        cp_remoting, cp_xds = free_port(), free_port()
        self.namesrv = "127.0.0.1:%d" % cp_remoting
        xds = "127.0.0.1:%d" % cp_xds
        self.cp = self.rocketmesh("control-plane", "control-plane", "--remoting", self.namesrv,
                                  "--xds", xds)
        self.cp.ports = [cp_remoting, cp_xds]
        self.cp.start()
        self.brokers = []
        for name in ("broker-a", "broker-b"):
            port = free_port()
            b = self.rocketmesh(name, "broker", "--listen", "127.0.0.1:%d" % port, "--data-dir",
                                os.path.join(self.dir, name), "--flush", "sync", "--name", name,
                                "--namesrv", self.namesrv, "--vip-channel", "false")
            b.ports, b.addr = [port], "127.0.0.1:%d" % port
            b.start()
            self.brokers.append(b)
        for b in self.brokers:
            code, _ = remoting(b.addr, 17, {
                "topic": TOPIC, "defaultTopic": "TBW102", "readQueueNums": str(QUEUES),
                "writeQueueNums": str(QUEUES), "perm": "6", "topicFilterType": "SINGLE_TAG",
                "topicSysFlag": "0", "order": "false"})
            if code != 0:
                raise RuntimeError("creating %s on %s: code %s" % (TOPIC, b.name, code))
        self.sidecars = []
        for i in (1, 2):
            port, admin = free_port(), free_port()
            s = self.rocketmesh("sidecar-%d" % i, "sidecar", "--xds", xds, "--listen",
                                "127.0.0.1:%d" % port, "--admin", "127.0.0.1:%d" % admin,
                                "--vip-channel", "false")
            s.ports, s.addr = [port, admin], "127.0.0.1:%d" % port
            s.start()
            self.sidecars.append(s)
        for s in self.sidecars:
            self.wait_route(s.addr)
        log("control plane %s, brokers %s, sidecars %s; work dir %s" % (
            self.namesrv, [b.addr for b in self.brokers], [s.addr for s in self.sidecars],
            self.dir))

    def wait_route(self, addr, timeout=60, fatal=True):
        want = ('"readQueueNums":%d' % (2 * QUEUES)).encode()
        end = time.time() + timeout
        while time.time() < end:
            try:
                code, body = remoting(addr, 105, {"topic": TOPIC})
                if code == 0 and want in body:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        msg = "%s: no route for %s over both brokers within %ds" % (addr, TOPIC, timeout)
        if fatal:
            raise RuntimeError(msg)
        log(msg)

    # --- the run ---

    def collect(self):
        for i, c in enumerate(self.consumers):
            for _, line in c.take_lines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "GOT":
                    t = float(parts[2])
                    self.got.setdefault(parts[1], []).append(t)
                    self.deliveries.append((t, i))
        for p in self.producers:
            for _, line in p.take_lines():
                parts = line.split(" ", 2)
                if parts[0] == "ACK" and len(parts) >= 2:
                    self.acked.add(parts[1])
                elif parts[0] == "FAIL" and len(parts) >= 2:
                    self.failed.add(parts[1])
                    reason = parts[2] if len(parts) > 2 else ""
                    key = reason.split(":")[0][:80]
                    self.fail_reasons[key] = self.fail_reasons.get(key, 0) + 1

    def sample_rss(self, label):
        for p in self.procs:
            r = p.rss()
            if label == "start" and r is not None:
                p.rss_first = (p.incarnation, r)

    def run(self):
        a = self.args
        self.t0 = time.time()
        self.setup()
        total = a.minutes * 60.0
        drain = min(90.0, max(30.0, total * 0.2))
        produce_s = max(30.0, total - drain)
        self.produce_until = time.time() + produce_s
        stop_file = os.path.join(self.dir, "stop-consumers")
        self.consumers = [
            self.worker("consumer-%d" % (i + 1), "consume", namesrv=s.addr, topic=TOPIC,
                        group=GROUP, stop_file=stop_file)
            for i, s in enumerate(self.sidecars)]
        for c in self.consumers:
            c.start()
        self.producers = [
            self.worker("producer-%d" % (i + 1), "produce", namesrv=s.addr, topic=TOPIC,
                        group="PG_Soak_%d" % (i + 1), prefix="p%d" % (i + 1),
                        interval=a.interval, until=self.produce_until)
            for i, s in enumerate(self.sidecars)]
        for p in self.producers:
            p.start()
        log("producing for %.0fs (seed %d), then up to %.0fs for consumers to catch up"
            % (produce_s, a.seed, drain))
        warm = time.time() + min(15.0, produce_s / 4)
        victims = [self.cp, self.brokers[1], self.sidecars[1]]
        next_event = time.time() + self.rng.uniform(a.min_gap, a.max_gap)
        sampled = False
        last_report = time.time()
        while time.time() < self.produce_until:
            time.sleep(0.5)
            self.collect()
            if not sampled and time.time() >= warm:
                self.sample_rss("start")
                sampled = True
            else:
                for p in self.procs:
                    p.rss()
            if time.time() >= next_event and time.time() < self.produce_until - 10:
                victim = self.rng.choice(victims)
                sig = signal.SIGKILL if self.rng.random() < a.kill_ratio else signal.SIGTERM
                self.restart(victim, sig)
                if victim in self.sidecars:
                    self.wait_route(victim.addr, fatal=False)
                next_event = time.time() + self.rng.uniform(a.min_gap, a.max_gap)
            if time.time() - last_report >= 30:
                last_report = time.time()
                log("acked %d, failed %d, consumed %d distinct"
                    % (len(self.acked), len(self.failed), len(self.got)))
        for p in self.producers:
            end = time.time() + 30
            while p.alive() and time.time() < end:
                time.sleep(0.2)
        self.collect()
        log("production over: acked %d, failed %d; waiting for the consumers"
            % (len(self.acked), len(self.failed)))
        end = time.time() + drain
        while time.time() < end:
            self.collect()
            if self.acked <= set(self.got):
                break
            time.sleep(0.5)
        time.sleep(2)  # late duplicates
        self.collect()
        self.sample_rss("end")
        for p in self.procs:
            p.rss()
        self.ends = {p.name: (p.incarnation, p.rss_last) for p in self.procs}
        with open(stop_file, "w"):
            pass
        return self.report(produce_s)

    def report(self, produce_s):
        produced = len(self.acked) + len(self.failed)
        consumed = set(self.got)
        lost = sorted(self.acked - consumed)
        deliveries = sum(len(v) for v in self.got.values())
        dups = deliveries - len(consumed)
        failed_but_consumed = len(self.failed & consumed)
        foreign = len(consumed - self.acked - self.failed)
        window_end = self.produce_until
        gap, gap_at = 0.0, None
        gaps_per = [0.0, 0.0]
        ts = sorted(self.deliveries)
        in_window = [(t, c) for t, c in ts if t <= window_end]
        for (t1, _), (t2, _) in zip(in_window, in_window[1:]):
            if t2 - t1 > gap:
                gap, gap_at = t2 - t1, t1
        for i in range(2):
            mine = [t for t, c in in_window if c == i]
            for t1, t2 in zip(mine, mine[1:]):
                gaps_per[i] = max(gaps_per[i], t2 - t1)
        # Consumer-2 consumes through sidecar-2: its first delivery after each restart of it.
        for e in self.events:
            if e["process"] == self.sidecars[1].name:
                after = [t for t, c in ts if c == 1 and t >= e["ready_at"]]
                e["consumer_back_s"] = round(after[0] - e["ready_at"], 2) if after else None
            e.pop("ready_at", None)
        out = {
            "seed": self.args.seed, "minutes": self.args.minutes,
            "production_s": round(produce_s), "produced": produced,
            "acknowledged": len(self.acked), "failed_sends": len(self.failed),
            "consumed": len(consumed), "lost": len(lost), "duplicates": dups,
            "consumed_of_failed_sends": failed_but_consumed, "foreign": foreign,
            "longest_gap_s": round(gap, 2),
            "longest_gap_at_s": round(gap_at - self.t0, 1) if gap_at else None,
            "longest_gap_per_consumer_s": [round(g, 2) for g in gaps_per],
            "restarts": self.events, "failure_reasons": self.fail_reasons,
            "rss_kib": {p.name: {"start": p.rss_first[1] if p.rss_first else None,
                                 "end": self.ends[p.name][1],
                                 "peak": p.rss_peak,
                                 "incarnations": p.incarnation} for p in self.procs},
        }
        print()
        print("== soak: %.1f min, seed %d ==" % (self.args.minutes, self.args.seed))
        print("produced %d, acknowledged %d, failed sends %d" % (
            produced, len(self.acked), len(self.failed)))
        print("consumed %d distinct (%d deliveries), duplicates %d, lost %d%s" % (
            len(consumed), deliveries, dups, len(lost),
            (" e.g. %s" % lost[:5]) if lost else ""))
        print("failed sends that were consumed anyway: %d" % failed_but_consumed)
        if self.fail_reasons:
            print("failed sends by reason: %s" % json.dumps(self.fail_reasons))
        print("longest gap in deliveries: %.2f s (at +%.0f s); per consumer %s s" % (
            gap, (gap_at - self.t0) if gap_at else 0, [round(g, 2) for g in gaps_per]))
        print("restarts (%d):" % len(self.events))
        for e in self.events:
            back = e.get("consumer_back_s", "")
            if back != "":
                back = ", consumer-2 delivering again %s s after" % back
            print("  +%6.1fs %-14s %-7s stopped in %.2fs, ready after %.2fs%s" % (
                e["t"], e["process"], e["signal"], e["stop_s"], e["ready_s"], back))
        print("RSS (KiB): process, start (after warm-up) -> end, peak, incarnations")
        for name, r in out["rss_kib"].items():
            print("  %-14s %8s -> %8s  peak %8s  x%d" % (
                name, r["start"], r["end"], r["peak"], r["incarnations"]))
        print("RESULT " + json.dumps(out))
        sys.stdout.flush()
        return 1 if lost else 0

    def cleanup(self):
        for p in reversed(self.procs):
            try:
                p.stop(signal.SIGTERM, grace=10)
            except Exception:  # keep cleaning up
                if p.p is not None:
                    p.p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def venv_python(args):
    """A python that can import rocketmq: --venv, the interop tests' venv, or a new venv."""
    def works(py):
        return os.path.exists(py) and subprocess.run(
            [py, "-c", "import rocketmq.client"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    candidates = [args.venv] if args.venv else [
        os.path.join(target, "tmp", "interop-venv"), os.path.join(target, "soak-venv")]
    for v in candidates:
        if works(os.path.join(v, "bin", "python")):
            return os.path.join(v, "bin", "python")
    v = candidates[-1]
    log("creating a venv with %s in %s" % (SDK, v))
    subprocess.run([sys.executable, "-m", "venv", v], check=True)
    subprocess.run([os.path.join(v, "bin", "pip"), "install", "-q",
                    "--disable-pip-version-check", SDK], check=True)
    py = os.path.join(v, "bin", "python")
    if not works(py):
        raise RuntimeError("%s cannot import rocketmq.client" % py)
    return py


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("produce", "consume"):
        o = {}
        rest = sys.argv[2:]
        for i in range(0, len(rest), 2):
            o[rest[i].lstrip("-").replace("-", "_")] = rest[i + 1]
        (worker_produce if sys.argv[1] == "produce" else worker_consume)(o)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="whole run, default 10")
    ap.add_argument("--seed", type=int, default=1, help="restart schedule, default 1")
    ap.add_argument("--bin", default=None, help="rocketmesh binary (default: release build)")
    ap.add_argument("--venv", default=None, help="venv with %s (default: found or made)" % SDK)
    ap.add_argument("--interval", type=float, default=0.02, help="s between a producer's sends")
    ap.add_argument("--min-gap", type=float, default=20.0, help="s between restarts, at least")
    ap.add_argument("--max-gap", type=float, default=50.0, help="s between restarts, at most")
    ap.add_argument("--kill-ratio", type=float, default=0.3, help="share of SIGKILL restarts")
    args = ap.parse_args()
    if args.bin is None:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
        args.bin = os.path.join(target, "release", "rocketmesh")
    if not os.access(args.bin, os.X_OK):
        log("no rocketmesh binary at %s: run `cargo build --release` or pass --bin" % args.bin)
        return 2
    try:
        args.python = venv_python(args)
    except (subprocess.CalledProcessError, RuntimeError) as e:
        log("cannot get a venv with %s: %s" % (SDK, e))
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    soak = Soak(args)
    try:
        return soak.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as e:
        log("setup failed: %s" % e)
        return 2
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
