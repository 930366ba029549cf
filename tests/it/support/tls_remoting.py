"""An independent TLS client (Python's stdlib ssl) speaking Remoting to a permissive listener.

Usage: tls_remoting.py HOST:PORT CA_PEM SERVER_NAME
Sends one GET_ROUTEINFO_BY_TOPIC (105) frame over TLS, then the same over plaintext on the
same port, and prints {"tls": <code>, "plain": <code>} (the answers' response codes).
"""
import json
import socket
import ssl
import struct
import sys


def frame(opaque):
    header = json.dumps({'code': 105, 'language': 'JAVA', 'version': 401, 'opaque': opaque,
                         'flag': 0, 'extFields': {'topic': 'TBW102'}}).encode()
    return struct.pack('>II', 4 + len(header), len(header)) + header


def answer(sock, opaque):
    sock.sendall(frame(opaque))
    buf = b''
    while len(buf) < 4 or len(buf) < 4 + struct.unpack('>I', buf[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError('connection closed')
        buf += chunk
    hlen = struct.unpack('>I', buf[4:8])[0] & 0xFFFFFF
    header = json.loads(buf[8:8 + hlen])
    assert header['opaque'] == opaque, header
    return header['code']


def main():
    addr, ca, name = sys.argv[1], sys.argv[2], sys.argv[3]
    host, port = addr.rsplit(':', 1)
    ctx = ssl.create_default_context(cafile=ca)
    out = {}
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            out['tls'] = answer(tls, 7)
            out['version'] = tls.version()
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        out['plain'] = answer(plain, 8)
    print(json.dumps(out))


main()
