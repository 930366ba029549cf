#!/usr/bin/env python3
"""Drives the real Apache RocketMQ C++ client (PyPI rocketmq==0.4.4, librocketmq.so through its
ctypes API) against a rocketmesh broker or sidecar, for tests/interop_cpp.rs and
tests/interop_sidecar.rs. Stdlib + rocketmq only.
Loopback only: the name server address is a standalone broker (it answers routes) or a sidecar.

Every mode prints progress lines to stdout and exactly one final line `RESULT <json>`; the caller
bounds the process with a timeout. The client writes its own logs under $HOME/logs.

Modes (argument 1), options as --key value:
  produce  --namesrv A --topic T --group G --count N [--oneway N] [--orderly N] [--prefix P]
           [--interval S]  (sleep S seconds after each send)
           send N sync messages (keys, TagA/TagB, user properties), then the oneway and orderly ones;
           RESULT {"sent": [{body, tags, keys, props, kind, status, msg_id, offset}], "errors": [...],
           "peers": ["host:port", ...]}  (every remote end of the process's TCP connections, sampled
           every 50 sends and before shutdown: the addresses the client actually talked to)
  consume  --namesrv A --topic T --group G --expect N [--max-seconds S] [--settle S]
           [--persist-wait S] [--fail-marker M] [--stop-file F] [--hang-after K]
           push consumer (CLUSTERING, "*"); stops once N distinct bodies were seen and every
           marked message (body containing M) was seen twice, or once file F exists (several
           consumers of one group: the caller decides when the group is done), or at max-seconds;
           then waits settle (to catch duplicates) and persist-wait (the client commits offsets
           every 5 s) and shuts down. Messages whose body contains M get RECONSUME_LATER the first
           time they are seen.
           Prints `GOT <body>` for every delivery as it happens.
           With --hang-after K the first K deliveries are consumed normally and every later
           callback prints `HANG <body>` and blocks forever (a hung consumer: every consume thread
           ends up stuck; it never shuts down, the caller kills it).
           RESULT {"received": [{body, topic, tags, keys, props, reconsume_times, retry_topic,
           msg_id, queue_id, queue_offset, commit_log_offset, t}], ...}
  produce_until_failure  --namesrv A --topic T --group G [--max N] [--interval S]
           [--stop-file F] [--timeout-ms MS]
           send sync in a loop (sleeping S seconds after each OK send); prints `ACK <i>` for every
           OK send as it happens and stops at the first failure (the broker is killed by the
           caller), after N sends, or once file F exists. RESULT {"acked": [i...],
           "attempted": n, "error": "..." or null}
  produce_loop  --namesrv A --topic T --group G --stop-file F [--interval S] [--prefix P]
           [--timeout-ms MS]
           send sync in a loop until file F exists, whatever fails (sleeping S seconds after each
           send); prints `ACK <i>` for every OK send. RESULT {"acked": [i...], "failed":
           [{"i": i, "t": unix seconds, "error": "..."}], "attempted": n}; bodies are
           `<P>-<7-digit i>`
  pull_all --namesrv A --topic T --group G [--max-seconds S]
           PullConsumer: every queue of T from offset 0 to the end. RESULT {"bodies": [...]}

Every client mode takes [--access-key AK --secret-key SK]: the client signs its requests with
them (Apache ACL, SessionCredentials with channel ALIYUN); without them it signs with empty keys,
as the C++ client always does.
"""
import ctypes
import json
import os
import socket
import struct
import sys
import threading
import time

from rocketmq.client import Message, Producer, PushConsumer, PullConsumer, SendStatus
from rocketmq.ffi import dll, _CConsumeStatus, MessageModel

# 64-bit, whatever the wheel's ctypes declarations say (the default restype is a C int).
dll.GetMessageCommitLogOffset.argtypes = [ctypes.c_void_p]
dll.GetMessageCommitLogOffset.restype = ctypes.c_longlong

PROP_NAMES = ('idx', 'color', 'run')


def opts(argv):
    o = {}
    for i in range(0, len(argv), 2):
        o[argv[i].lstrip('-').replace('-', '_')] = argv[i + 1]
    return o


def s(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode('utf-8', 'replace')
    return v


def result(obj):
    sys.stdout.write('RESULT ' + json.dumps(obj) + '\n')
    sys.stdout.flush()


def tcp_peers():
    """Remote ends (host:port) of this process's IPv4 TCP connections, from /proc."""
    inodes = set()
    for fd in os.listdir('/proc/self/fd'):
        try:
            link = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue
        if link.startswith('socket:['):
            inodes.add(link[len('socket:['):-1])
    peers = set()
    with open('/proc/self/net/tcp') as f:
        next(f)  # header
        for line in f:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if inode in inodes and state != '0A':  # 0A = LISTEN
                ip, port = remote.split(':')
                host = socket.inet_ntoa(struct.pack('<I', int(ip, 16)))
                peers.add('%s:%d' % (host, int(port, 16)))
    return peers


def make(topic, body, tags, keys, props):
    m = Message(topic)
    m.set_keys(keys)
    m.set_tags(tags)
    for k, v in props.items():
        m.set_property(k, v)
    m.set_body(body)
    return m


def credentials(client, o):
    if 'access_key' in o:
        client.set_session_credentials(o['access_key'], o.get('secret_key', ''), 'ALIYUN')


def producer(o):
    p = Producer(o['group'], timeout=int(o.get('timeout_ms', 3000)))
    p.set_namesrv_addr(o['namesrv'])
    credentials(p, o)
    p.start()
    return p


def produce(o):
    topic = o['topic']
    prefix = o.get('prefix', 'm')
    n, n_oneway, n_orderly = int(o['count']), int(o.get('oneway', 0)), int(o.get('orderly', 0))
    p = producer(o)
    sent, errors, peers = [], [], set()
    interval = float(o.get('interval', 0))
    plan = ([('sync', i) for i in range(n)] + [('oneway', i) for i in range(n_oneway)]
            + [('orderly', i) for i in range(n_orderly)])
    for kind, i in plan:
        body = '%s-%s-%05d' % (prefix, kind, i)
        tags = 'TagA' if i % 3 else 'TagB'
        keys = 'k-%s-%s-%d k2-%d' % (prefix, kind, i, i)
        props = {'idx': str(i), 'color': ('red', 'green', 'blue')[i % 3], 'run': prefix}
        rec = {'body': body, 'tags': tags, 'keys': keys, 'props': props, 'kind': kind}
        try:
            m = make(topic, body, tags, keys, props)
            if kind == 'sync':
                r = p.send_sync(m)
            elif kind == 'oneway':
                p.send_oneway(m)
                r = None
            else:
                r = p.send_orderly(m, i % int(o.get('keys', 7)))
            if r is not None:
                rec.update(status=SendStatus(r.status).name, msg_id=r.msg_id, offset=r.offset)
            sent.append(rec)
            if len(sent) % 50 == 0:
                peers |= tcp_peers()
            if interval:
                time.sleep(interval)
        except Exception as e:  # recorded, the caller asserts there are none
            errors.append('%s: %r' % (body, e))
    time.sleep(0.5)  # let oneway sends leave the socket before shutdown
    peers |= tcp_peers()
    result({'sent': sent, 'errors': errors, 'peers': sorted(peers)})  # before shutdown: see consume
    p.shutdown()


def consume(o):
    expect = int(o['expect'])
    max_s = float(o.get('max_seconds', 60))
    settle = float(o.get('settle', 2))
    persist_wait = float(o.get('persist_wait', 0))
    marker = o.get('fail_marker', '').encode() or None
    stop_file = o.get('stop_file')
    hang_after = int(o['hang_after']) if 'hang_after' in o else None
    never = threading.Event()
    lock = threading.Lock()
    received, seen = [], {}
    done = threading.Event()
    t0 = time.time()

    def complete():
        if len(seen) < expect:
            return False
        if marker:
            return all(n >= 2 for b, n in seen.items() if marker in b)
        return True

    def on_message(_consumer, cmsg):
        body = dll.GetMessageBody(cmsg) or b''
        rec = {
            'body': s(body),
            'topic': s(dll.GetMessageTopic(cmsg)),
            'tags': s(dll.GetMessageTags(cmsg)),
            'keys': s(dll.GetMessageKeys(cmsg)),
            'props': {k: s(dll.GetMessageProperty(cmsg, k.encode())) for k in PROP_NAMES},
            'reconsume_times': dll.GetMessageReconsumeTimes(cmsg),
            'retry_topic': s(dll.GetMessageProperty(cmsg, b'RETRY_TOPIC')),
            'msg_id': s(dll.GetMessageId(cmsg)),
            'queue_id': dll.GetMessageQueueId(cmsg),
            'queue_offset': dll.GetMessageQueueOffset(cmsg),
            'commit_log_offset': dll.GetMessageCommitLogOffset(cmsg),
            't': round(time.time() - t0, 3),
            'ts': time.time(),
        }
        with lock:
            if hang_after is not None and len(received) >= hang_after:
                sys.stdout.write('HANG %s\n' % rec['body'])
                sys.stdout.flush()
                hang = True
            else:
                hang = False
        if hang:
            never.wait()
        with lock:
            n = seen.get(body, 0)
            seen[body] = n + 1
            fail = bool(marker and marker in body and n == 0)
            rec['status'] = 'RECONSUME_LATER' if fail else 'CONSUME_SUCCESS'
            received.append(rec)
            if complete():
                done.set()
            # One write under the lock: print() from two client threads can interleave lines.
            sys.stdout.write('GOT %s\n' % rec['body'])
            sys.stdout.flush()
        if fail:
            return _CConsumeStatus.RECONSUME_LATER.value
        return _CConsumeStatus.CONSUME_SUCCESS.value

    model = MessageModel.BROADCASTING if o.get('model') == 'broadcasting' else MessageModel.CLUSTERING
    c = PushConsumer(o['group'], orderly=o.get('orderly') == 'true', message_model=model)
    c.set_namesrv_addr(o['namesrv'])
    credentials(c, o)
    c.set_thread_count(2)
    c.set_message_batch_max_size(1)
    from rocketmq.exceptions import ffi_check
    ffi_check(dll.Subscribe(c._handle, o['topic'].encode(), b'*'))
    c._register_callback(on_message)
    c.start()
    print('consumer started', flush=True)
    deadline = t0 + max_s
    stopped = False
    while not done.is_set() and time.time() < deadline:
        if stop_file and os.path.exists(stop_file):
            stopped = True
            break
        done.wait(0.1)
    completed = done.is_set()
    print('consumer complete=%s after %.1fs' % (completed, time.time() - t0), flush=True)
    time.sleep(settle)
    time.sleep(persist_wait)
    with lock:
        out = list(received)
    # The RESULT goes out before the client's shutdown: the C++ client 2.x sometimes aborts in
    # its shutdown ('boost::thread_interrupted' thrown in one of its threads), which must not
    # lose what was consumed. The caller still waits for this process to exit.
    result({'received': out, 'completed': completed, 'stopped': stopped})
    ts = time.time()
    c.shutdown()
    print('shutdown took %.3fs' % (time.time() - ts), flush=True)


def produce_until_failure(o):
    p = producer(o)
    acked, attempted, error = [], 0, None
    limit = int(o.get('max', 1000000))
    interval = float(o.get('interval', 0))
    stop_file = o.get('stop_file')
    for i in range(limit):
        if stop_file and os.path.exists(stop_file):
            break
        attempted += 1
        try:
            r = p.send_sync(make(o['topic'], 'crash-%07d' % i, 'TagA', 'crash-%d' % i,
                                 {'idx': str(i)}))
        except Exception as e:
            error = repr(e)
            break
        if r.status != SendStatus.OK:
            error = 'status %s' % r.status
            break
        acked.append(i)
        print('ACK %d' % i, flush=True)
        if interval:
            time.sleep(interval)
    result({'acked': acked, 'attempted': attempted, 'error': error})
    sys.stdout.flush()
    os._exit(0)  # the broker is dead: skip the client's shutdown (it would retry unregistering)


def produce_loop(o):
    p = producer(o)
    acked, failed, attempted = [], [], 0
    interval = float(o.get('interval', 0))
    prefix = o.get('prefix', 'loop')
    stop_file = o['stop_file']
    i = 0
    while not os.path.exists(stop_file):
        attempted += 1
        try:
            r = p.send_sync(make(o['topic'], '%s-%07d' % (prefix, i), 'TagA', '%s-%d' % (prefix, i),
                                 {'idx': str(i)}))
            if r.status == SendStatus.OK:
                acked.append(i)
                sys.stdout.write('ACK %d\n' % i)
                sys.stdout.flush()
            else:
                failed.append({'i': i, 't': time.time(), 'error': 'status %s' % r.status})
        except Exception as e:
            failed.append({'i': i, 't': time.time(), 'error': repr(e)})
        i += 1
        if interval:
            time.sleep(interval)
    result({'acked': acked, 'failed': failed, 'attempted': attempted})
    sys.stdout.flush()
    os._exit(0)  # skip the client's shutdown (a dead broker makes it retry unregistering)


def pull_all(o):
    pc = PullConsumer(o['group'])
    pc.set_namesrv_addr(o['namesrv'])
    pc.start()
    deadline = time.time() + float(o.get('max_seconds', 30))
    bodies = []
    for m in pc.pull(o['topic'], '*', 32):
        bodies.append(s(m.body))
        if time.time() > deadline:
            break
    result({'bodies': bodies, 'timed_out': time.time() > deadline})  # before shutdown: see consume
    pc.shutdown()


def remoting_call(addr, code, ext):
    """One Remoting request (JSON header) on a fresh connection: the answer's code."""
    host, port = addr.rsplit(':', 1)
    host = host.strip('[]')
    header = json.dumps({'code': code, 'language': 'JAVA', 'version': 401, 'opaque': 1,
                         'flag': 0, 'extFields': ext}).encode()
    frame = struct.pack('>II', 4 + len(header), len(header)) + header
    with socket.create_connection((host, int(port)), timeout=10) as c:
        c.settimeout(10)
        c.sendall(frame)
        buf = b''
        while len(buf) < 4 or len(buf) < 4 + struct.unpack('>I', buf[:4])[0]:
            chunk = c.recv(65536)
            if not chunk:
                raise OSError('connection closed by ' + addr)
            buf += chunk
    hlen = struct.unpack('>I', buf[4:8])[0] & 0xFFFFFF
    return json.loads(buf[8:8 + hlen]).get('code')


def create_topic(o):
    """UPDATE_AND_CREATE_TOPIC (17) on each broker in --brokers (comma separated host:port), one
    raw Remoting request each (no SDK): for tests whose brokers only this process can reach."""
    codes = {}
    for addr in o['brokers'].split(','):
        ext = {'topic': o['topic'], 'defaultTopic': 'TBW102', 'readQueueNums': o.get('queues', '4'),
               'writeQueueNums': o.get('queues', '4'), 'perm': o.get('perm', '6'),
               'topicFilterType': 'SINGLE_TAG', 'topicSysFlag': '0', 'order': 'false'}
        try:
            codes[addr] = remoting_call(addr, 17, ext)
        except OSError as e:
            codes[addr] = 'error: %s' % e
    result({'codes': codes})


def raw(o):
    """One raw Remoting request (--code, --ext JSON) to --addr: {'code': n} or {'error': ...}."""
    try:
        result({'code': remoting_call(o['addr'], int(o['code']), json.loads(o.get('ext', '{}')))})
    except OSError as e:
        result({'error': str(e)})


def echo_probe(o):
    """Connects to --addr, sends a line, returns what came back (or the error)."""
    host, port = o['addr'].rsplit(':', 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as c:
            c.settimeout(5)
            c.sendall(b'ping\n')
            result({'reply': c.recv(1024).decode('utf-8', 'replace')})
    except OSError as e:
        result({'error': str(e)})


if __name__ == '__main__':
    mode = sys.argv[1]
    o = opts(sys.argv[2:])
    {'produce': produce, 'consume': consume, 'produce_until_failure': produce_until_failure,
     'produce_loop': produce_loop,
     'pull_all': pull_all, 'create_topic': create_topic, 'raw': raw,
     'echo_probe': echo_probe}[mode](o)
    sys.stdout.flush()
    os._exit(0)  # skip ctypes destructors calling shutdown a second time
