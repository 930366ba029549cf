#!/usr/bin/env python3
"""create_topic.py --topic T [--queues 4] BROKER...: what `mqadmin updateTopic` does, for the
compose demo's one-shot `topics` service: one UPDATE_AND_CREATE_TOPIC (request code 17) to each
broker (host:port), retried until the broker answers SUCCESS (bounded: 120 s per broker). A broker
started with --read-only-topics T keeps T read-only whatever the request asks.

Remoting framing: 4-byte length of what follows, 4-byte header length (top byte: serialization,
0 = JSON), the JSON header; no body.
"""
import argparse
import json
import socket
import struct
import sys
import time

UPDATE_AND_CREATE_TOPIC = 17


def request(addr, ext):
    host, port = addr.rsplit(':', 1)
    header = json.dumps({'code': UPDATE_AND_CREATE_TOPIC, 'language': 'PYTHON', 'version': 401,
                         'opaque': 1, 'flag': 0, 'extFields': ext}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(10)
        s.sendall(struct.pack('>II', 4 + len(header), len(header)) + header)
        data = b''
        while len(data) < 4 or len(data) < 4 + struct.unpack('>I', data[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError('%s closed the connection' % addr)
            data += chunk
    header_len = struct.unpack('>I', data[4:8])[0] & 0xFFFFFF
    answer = json.loads(data[8:8 + header_len])
    return answer.get('code'), answer.get('remark')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--topic', required=True)
    p.add_argument('--queues', type=int, default=4)
    p.add_argument('brokers', nargs='+')
    a = p.parse_args()
    ext = {'topic': a.topic, 'defaultTopic': 'TBW102', 'readQueueNums': str(a.queues),
           'writeQueueNums': str(a.queues), 'perm': '6', 'topicFilterType': 'SINGLE_TAG',
           'topicSysFlag': '0', 'order': 'false'}
    for broker in a.brokers:
        until = time.time() + 120
        while True:
            try:
                code, remark = request(broker, ext)
                if code == 0:
                    print('topic %s created on %s' % (a.topic, broker), flush=True)
                    break
                problem = 'code %s: %s' % (code, remark)
            except OSError as e:
                problem = str(e)
            if time.time() > until:
                sys.exit('cannot create %s on %s: %s' % (a.topic, broker, problem))
            time.sleep(1)


if __name__ == '__main__':
    main()
