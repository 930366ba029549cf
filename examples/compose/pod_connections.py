#!/usr/bin/env python3
"""pod_connections.py POD < /proc/net/tcp (read inside the pod's network namespace): fails
unless everything the pod says to the cluster goes through its sidecar. For
examples/compose/ci.sh.

An established IPv4 connection to a cluster port (9876 nameserver, 10911 brokers, 18000 xDS) off
loopback is either the sidecar's own (uid 10001) or the application's; an application's
connection is fine only if the redirect rules took it to the sidecar: its socket still names the
original destination, but its local end is then the peer of a socket the sidecar accepted on
127.0.0.1:9876. Fails too when there is no redirected connection or none of the sidecar's."""
import sys

CLUSTER_PORTS = (9876, 10911, 18000)
SIDECAR_UID = 10001
SIDECAR_LISTEN = '0100007F:2694'  # 127.0.0.1:9876 as /proc/net/tcp prints it
ESTABLISHED = '01'


def show(endpoint):
    ip, port = endpoint.split(':')
    octets = [str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)]  # little-endian hex
    return '%s:%d' % ('.'.join(octets), int(port, 16))


def main():
    pod = sys.argv[1]
    sockets = []
    for line in list(sys.stdin)[1:]:
        f = line.split()
        if f[3] == ESTABLISHED:
            sockets.append((f[1], f[2], int(f[7])))
    accepted = {remote for local, remote, _ in sockets if local == SIDECAR_LISTEN}
    sidecar = redirected = 0
    direct = []
    for local, remote, uid in sockets:
        ip, port = remote.split(':')
        if ip.endswith('7F') or int(port, 16) not in CLUSTER_PORTS:
            continue  # loopback, or not the cluster
        if uid == SIDECAR_UID:
            sidecar += 1
        elif local in accepted:
            redirected += 1
        else:
            direct.append('uid %d: %s -> %s' % (uid, show(local), show(remote)))
    if direct or not sidecar or not redirected:
        sys.exit('%s: connections to the cluster not through the sidecar: %s (the sidecar\'s: %d, '
                 'redirected to it: %d)' % (pod, direct, sidecar, redirected))
    print('   %s: %d connections of the sidecar to the cluster, %d of the application '
          'redirected to the sidecar, none direct' % (pod, sidecar, redirected))


if __name__ == '__main__':
    main()
