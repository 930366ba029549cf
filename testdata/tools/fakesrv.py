#!/usr/bin/env python3
"""Fake RocketMQ Remoting name server + broker, for capturing real client frames (loopback only).

Written for rocketmesh's fixture capture (stdlib only). It listens on 127.0.0.1 only:
  NAMESRV_PORT (default 19876)  -- answers GET_ROUTEINFO_BY_TOPIC
  BROKER_PORT  (default 19911)  -- answers producer / consumer traffic
Both ports run the same dispatcher, so any code works on either.

Every complete frame received and every frame sent is appended to LOG (JSONL), one object per
frame: {ts, port, conn, dir: "c2s"|"s2c", code, opaque, flag, header, body_len, frame_hex}.
frame_hex is the whole frame, including the 4-byte big-endian length prefix.

Re-run:  python3 fakesrv.py LOG.jsonl [SECONDS]     (exits by itself after SECONDS, default 90)
Driven by cpp_driver.py; run_capture.sh WORKDIR runs the whole capture (see its header).

Behaviour (plausible Java-broker-like answers, JSON header, language JAVA, version 401):
  105 GET_ROUTEINFO_BY_TOPIC  known topic -> SUCCESS + TopicRouteData; UNKNOWN_TOPICS -> 17;
                              TBW102 -> 8 queues, perm 7
  10/310/320 SEND_*           SUCCESS, msgId/queueId/queueOffset/MSG_REGION/TRACE_ON
  34 HEART_BEAT               SUCCESS (records clientID per consumer group)
  38 GET_CONSUMER_LIST        SUCCESS {"consumerIdList":[...]}
  14 QUERY_CONSUMER_OFFSET    SUCCESS offset 0; QUERY_NOT_FOUND (22) for NOT_FOUND_OFFSET_TOPICS
  15 UPDATE_CONSUMER_OFFSET   SUCCESS (none if oneway)
  30/31 GET_MAX/MIN_OFFSET    SUCCESS offset 0
  11 PULL_MESSAGE             first pull of queue 0 of a STORED topic -> SUCCESS + 3 records;
                              otherwise PULL_NOT_FOUND (19) after a 1 s hold
  36 CONSUMER_SEND_MSG_BACK, 35 UNREGISTER_CLIENT -> SUCCESS
  anything else               code 3, remark " request type N not supported"
A request with flag bit 1 (oneway, value 2) never gets a response.
"""
import json
import socket
import struct
import sys
import threading
import time
import zlib

HOST = '127.0.0.1'
NAMESRV_PORT = 19876
BROKER_PORT = 19911
BROKER_ADDR = '%s:%d' % (HOST, BROKER_PORT)
UNKNOWN_TOPICS = {'TopicCapUnknown'}
NOT_FOUND_OFFSET_TOPICS = {'TopicCapTag'}
# topic -> list of (tags, keys, body) stored in queue 0
STORED = {
    'TopicCap': [('TagA', 'k-0', b'stored body 0'),
                 ('TagB', 'k-1', b'stored body 1 please-fail'),
                 ('TagA', 'k-2', b'stored body 2')],
    'TopicCapTag': [('TagA', 'kt-0', b'tagged body 0'),
                    ('TagC', 'kt-1', b'tagged body 1 (TagC, filtered by the client)'),
                    ('TagB', 'kt-2', b'tagged body 2')],
}
PHYS_BASE = {'TopicCap': 100000, 'TopicCapTag': 200000}

LOG_LOCK = threading.Lock()
STATE_LOCK = threading.Lock()
CONN_SEQ = [0]
LOG_FILE = None
CONSUMERS = {}            # group -> list of clientIDs (from heartbeats)
PULLED_FIRST = set()      # (group, topic, queueId) already served with messages
QUEUE_OFFSETS = {}        # (topic, queueId) -> next queue offset for sends
PHYS_OFFSET = [5000000]   # fake commit-log offset for sends


def log_frame(port, conn, direction, frame):
    hlen = struct.unpack_from('>I', frame, 4)[0] & 0xFFFFFF
    try:
        hdr = json.loads(frame[8:8 + hlen].decode('utf-8'))
    except ValueError:
        hdr = {'_undecodable': frame[8:8 + hlen].hex()}
    rec = {'ts': round(time.time(), 3), 'port': port, 'conn': conn, 'dir': direction,
           'code': hdr.get('code'), 'opaque': hdr.get('opaque'), 'flag': hdr.get('flag'),
           'header': hdr, 'body_len': len(frame) - 8 - hlen, 'frame_hex': frame.hex()}
    with LOG_LOCK:
        LOG_FILE.write(json.dumps(rec) + '\n')
        LOG_FILE.flush()


def build_frame(header, body=b''):
    h = json.dumps(header, separators=(',', ':'), sort_keys=True).encode('utf-8')
    return struct.pack('>II', 4 + len(h) + len(body), len(h)) + h + body


def response(req, code, ext=None, remark=None):
    hdr = {'code': code, 'extFields': ext or {}, 'flag': 1, 'language': 'JAVA',
           'opaque': req['opaque'], 'serializeTypeCurrentRPC': 'JSON', 'version': 401}
    if remark is not None:
        hdr['remark'] = remark
    return hdr


def route_body(topic):
    if topic == 'TBW102':
        qd = {'brokerName': 'broker-a', 'perm': 7, 'readQueueNums': 8, 'topicSysFlag': 0,
              'writeQueueNums': 8}
    else:
        qd = {'brokerName': 'broker-a', 'perm': 6, 'readQueueNums': 4, 'topicSysFlag': 0,
              'writeQueueNums': 4}
    route = {'brokerDatas': [{'brokerAddrs': {'0': BROKER_ADDR}, 'brokerName': 'broker-a',
                              'cluster': 'DefaultCluster'}],
             'filterServerTable': {}, 'queueDatas': [qd]}
    return json.dumps(route, separators=(',', ':')).encode('utf-8')


def offset_msg_id(phys):
    return (bytes([127, 0, 0, 1]) + struct.pack('>iq', BROKER_PORT, phys)).hex().upper()


def props_string(d):
    return ''.join('%s\x01%s\x02' % (k, v) for k, v in d.items())


def uniq_key(i):
    return ('7F000001' + '%04X' % 4242 + '%08X' % 0x1234ABCD + '%08X' % 1000 + '%04X' % i)


def encode_stored(topic, queue_id, qoffset, phys, tags, keys, body, born_port):
    props = props_string({'KEYS': keys, 'TAGS': tags, 'WAIT': 'true',
                          'UNIQ_KEY': uniq_key(qoffset + (0 if topic == 'TopicCap' else 16))}
                         ).encode('utf-8')
    tb = topic.encode('utf-8')
    now = int(time.time() * 1000)
    rest = struct.pack('>iiiqqiq', zlib.crc32(body) & 0x7FFFFFFF, queue_id, 0, qoffset, phys, 0,
                       now - 5000)
    rest += bytes([127, 0, 0, 1]) + struct.pack('>i', born_port)
    rest += struct.pack('>q', now - 4990)
    rest += bytes([127, 0, 0, 1]) + struct.pack('>i', BROKER_PORT)
    rest += struct.pack('>iq', 0, 0)
    rest += struct.pack('>i', len(body)) + body
    rest += struct.pack('>B', len(tb)) + tb
    rest += struct.pack('>h', len(props)) + props
    magic = struct.pack('>I', 0xDAA320A7)
    size = 4 + len(magic) + len(rest)
    return struct.pack('>i', size) + magic + rest


def count_batch(body):
    n, p = 0, 0
    while p + 4 <= len(body):
        (size,) = struct.unpack_from('>i', body, p)
        if size <= 0:
            break
        p += size
        n += 1
    return max(n, 1)


class Conn(object):
    def __init__(self, sock, port, cid):
        self.sock, self.port, self.cid = sock, port, cid
        self.wlock = threading.Lock()

    def send(self, header, body=b''):
        frame = build_frame(header, body)
        log_frame(self.port, self.cid, 's2c', frame)
        with self.wlock:
            try:
                self.sock.sendall(frame)
            except OSError:
                pass


def handle(conn, req, body):
    code = req.get('code')
    ext = req.get('extFields') or {}
    oneway = bool(int(req.get('flag') or 0) & 2)

    def reply(hdr, rbody=b''):
        if not oneway:
            conn.send(hdr, rbody)

    if code == 105:
        topic = ext.get('topic')
        if topic in UNKNOWN_TOPICS:
            reply(response(req, 17, remark='No topic route info in name server for the topic: %s'
                           % topic))
        else:
            reply(response(req, 0), route_body(topic))
    elif code in (10, 310, 320):
        topic = ext.get('topic', ext.get('b'))
        qid = int(ext.get('queueId', ext.get('e', 0)))
        batch = str(ext.get('batch', ext.get('m', 'false'))).lower() in ('true', '1')
        n = count_batch(body) if (batch or code == 320) else 1
        with STATE_LOCK:
            qoff = QUEUE_OFFSETS.get((topic, qid), 0)
            QUEUE_OFFSETS[(topic, qid)] = qoff + n
            ids = []
            for _ in range(n):
                ids.append(offset_msg_id(PHYS_OFFSET[0]))
                PHYS_OFFSET[0] += 200
        reply(response(req, 0, {'msgId': ','.join(ids), 'queueId': str(qid),
                                'queueOffset': str(qoff), 'MSG_REGION': 'DefaultRegion',
                                'TRACE_ON': 'true'}))
    elif code == 34:
        try:
            hb = json.loads(body.decode('utf-8'))
        except ValueError:
            hb = {}
        with STATE_LOCK:
            for cd in hb.get('consumerDataSet') or []:
                ids = CONSUMERS.setdefault(cd.get('groupName'), [])
                if hb.get('clientID') and hb['clientID'] not in ids:
                    ids.append(hb['clientID'])
        reply(response(req, 0))
    elif code == 38:
        with STATE_LOCK:
            ids = list(CONSUMERS.get(ext.get('consumerGroup'), []))
        reply(response(req, 0), json.dumps({'consumerIdList': ids},
                                           separators=(',', ':')).encode('utf-8'))
    elif code == 14:
        if ext.get('topic') in NOT_FOUND_OFFSET_TOPICS:
            reply(response(req, 22, remark='Not found, V3_0_6_SNAPSHOT maybe this group consumer '
                                           'boot first'))
        else:
            reply(response(req, 0, {'offset': '0'}))
    elif code == 15:
        reply(response(req, 0))
    elif code in (30, 31):
        reply(response(req, 0, {'offset': '0'}))
    elif code == 11:
        topic = ext.get('topic')
        qid = int(ext.get('queueId', 0))
        qoffset = int(ext.get('queueOffset', 0))
        group = ext.get('consumerGroup')
        msgs = STORED.get(topic, [])
        key = (group, topic, qid)
        with STATE_LOCK:
            first = qid == 0 and msgs and qoffset < len(msgs) and key not in PULLED_FIRST
            if first:
                PULLED_FIRST.add(key)
        max_off = len(msgs) if qid == 0 else 0
        if first:
            recs = b''
            phys = PHYS_BASE.get(topic, 0)
            for i in range(qoffset, len(msgs)):
                tags, keys, mbody = msgs[i]
                rec = encode_stored(topic, qid, i, phys, tags, keys, mbody, 40000 + i)
                recs += rec
                phys += len(rec)
            reply(response(req, 0, {'suggestWhichBrokerId': '0', 'nextBeginOffset': str(len(msgs)),
                                    'minOffset': '0', 'maxOffset': str(max_off)},
                           remark='FOUND'), recs)
        else:
            hdr = response(req, 19, {'suggestWhichBrokerId': '0',
                                     'nextBeginOffset': str(min(qoffset, max_off) if max_off else 0),
                                     'minOffset': '0', 'maxOffset': str(max_off)},
                           remark='OFFSET_OVERFLOW_ONE')
            if not oneway:
                t = threading.Timer(1.0, conn.send, args=(hdr,))
                t.daemon = True
                t.start()
    elif code in (35, 36):
        reply(response(req, 0))
    else:
        reply(response(req, 3, remark=' request type %s not supported' % code))


def serve_conn(sock, port):
    with STATE_LOCK:
        CONN_SEQ[0] += 1
        cid = CONN_SEQ[0]
    conn = Conn(sock, port, cid)
    buf = b''
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= 4:
                (total,) = struct.unpack_from('>I', buf, 0)
                if len(buf) < 4 + total:
                    break
                frame, buf = buf[:4 + total], buf[4 + total:]
                log_frame(port, cid, 'c2s', frame)
                hlen = struct.unpack_from('>I', frame, 4)[0] & 0xFFFFFF
                try:
                    req = json.loads(frame[8:8 + hlen].decode('utf-8'))
                except ValueError:
                    continue
                if int(req.get('flag') or 0) & 1:
                    continue  # a response from the client (to a server-pushed request)
                handle(conn, req, frame[8 + hlen:])
    except OSError:
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def bind(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))  # raises (and the program exits) if the port is taken
    srv.listen(64)
    return srv


def listen(srv, port):
    while True:
        s, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(s, port), daemon=True).start()


def main():
    global LOG_FILE
    LOG_FILE = open(sys.argv[1], 'a')
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 90.0
    socks = [(bind(p), p) for p in (NAMESRV_PORT, BROKER_PORT)]
    for srv, p in socks:
        threading.Thread(target=listen, args=(srv, p), daemon=True).start()
    print('fakesrv listening on %s:%d (namesrv) and %s (broker) for %.0f s'
          % (HOST, NAMESRV_PORT, BROKER_ADDR, seconds), flush=True)
    time.sleep(seconds)
    LOG_FILE.close()


if __name__ == '__main__':
    main()
