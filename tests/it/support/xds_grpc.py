"""An independent ADS client (PyPI grpcio) over TLS with a bearer token.

Usage: xds_grpc.py HOST:PORT CA_PEM SERVER_NAME TOKEN  (TOKEN "" = no authorization metadata)
Opens a state-of-the-world ADS stream (StreamAggregatedResources), asks for every Cluster and
prints `clusters=<n>` for the first response, or `error=<grpc status code name>`. The protobuf
messages are encoded by hand (a few length-delimited fields), so no generated code is needed.
"""
import sys

import grpc

CLUSTER = 'type.googleapis.com/envoy.config.cluster.v3.Cluster'
METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources'


def varint(n):
    out = b''
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(num, payload):
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def count_field(buf, wanted):
    """How many times length-delimited field `wanted` occurs at the top level of `buf`."""
    i = count = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            count += (key >> 3) == wanted
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError('wire type %d' % wire)
    return count


def main():
    addr, ca, name, token = sys.argv[1:5]
    with open(ca, 'rb') as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [('grpc.ssl_target_name_override', name)]
    # DiscoveryRequest: node (2) { id (1) }, type_url (4); no resource_names = every Cluster.
    request = ld(2, ld(1, b'python-grpcio')) + ld(4, CLUSTER.encode())
    metadata = [('authorization', 'Bearer ' + token)] if token else []
    with grpc.secure_channel(addr, creds, options=options) as channel:
        call = channel.stream_stream(METHOD)(iter([request]), metadata=metadata, timeout=10)
        try:
            first = next(call)
            # DiscoveryResponse: resources (2), repeated.
            print('clusters=%d' % count_field(first, 2))
        except grpc.RpcError as e:
            print('error=%s' % e.code().name)
        finally:
            call.cancel()


main()
