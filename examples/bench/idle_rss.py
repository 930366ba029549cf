#!/usr/bin/env python3
# Part of examples/bench: prints figures, asserts nothing. Usage: idle_rss.py BIN N (env SEND=0/1, SETTLE=s).
"""idle_rss.py BIN N: starts `BIN broker` on loopback, opens N idle connections (each sends one
heartbeat-sized request first, as an SDK would), and prints RSS growth per connection."""
import os, socket, subprocess, sys, tempfile, time, json, struct
bin_, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
p = subprocess.Popen([bin_, "broker", "--listen", "127.0.0.1:0", "--data-dir", d], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
line = p.stdout.readline().split()
addr = line[1]; host, port = addr.rsplit(":", 1)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def frame(code, opaque):
    h = json.dumps({"code": code, "language": "CPP", "version": 401, "opaque": opaque, "flag": 0, "extFields": {}}).encode()
    return struct.pack(">II", 4 + len(h), len(h)) + h
time.sleep(0.5)
base = rss()
socks = []
for i in range(n):
    s = socket.create_connection((host, int(port)))
    if os.environ.get("SEND", "1") == "1": s.sendall(frame(34, i))
    socks.append(s)
if os.environ.get('SEND','1')=='1':
    for s in socks:
        s.settimeout(5); s.recv(65536)
time.sleep(float(os.environ.get("SETTLE", "3")))
after = rss()
print(f"{bin_}: {n} idle connections: RSS +{after-base} KiB, {(after-base)/n:.1f} KiB per connection")
p.terminate(); p.wait()
