#!/usr/bin/env python3
"""Cut a fakesrv.py frame log (JSONL) into fixture files (stdlib only).

usage: cut_fixtures.py frames.jsonl OUTDIR

For each selector below, the FIRST client->server request matching it is written as
  OUTDIR/<name>.req.hex   whole request frame (4-byte length included), lowercase hex, one line
  OUTDIR/<name>.resp.hex  the fake server's answer (same connection + opaque), if any
  OUTDIR/<name>.req.json  the request decoded: header exactly as JSON-decoded, body_len, body
                          (body_utf8 when printable, else body_hex) and, for message bodies, a
                          decoded view (the layout the repo's golden tests read)
  OUTDIR/<name>.resp.json the same for the response
  OUTDIR/<name>.json      the pair in one document, with a description
and OUTDIR/INDEX.tsv lists them. A selector that matches nothing is reported on stderr.
"""
import json
import os
import struct
import sys
import zlib

NOT_EXIST_TS = [float('inf')]  # time of the first TOPIC_NOT_EXIST answer


def ext(r):
    return r['header'].get('extFields') or {}


def is_req(r, code):
    return r['dir'] == 'c2s' and r['header'].get('code') == code


# name -> (description, predicate over a c2s log record)
SELECTORS = [
    ('cpp044_get_route_info_by_topic_ok', 'GET_ROUTEINFO_BY_TOPIC (105) for TopicCap -> SUCCESS + route',
     lambda r: is_req(r, 105) and ext(r).get('topic') == 'TopicCap'),
    ('cpp044_get_route_info_by_topic_not_exist', '105 for TopicCapUnknown -> TOPIC_NOT_EXIST (17)',
     lambda r: is_req(r, 105) and ext(r).get('topic') == 'TopicCapUnknown'),
    ('cpp044_get_route_info_by_topic_tbw102', '105 for TBW102 (fallback right after the 17)',
     lambda r: is_req(r, 105) and ext(r).get('topic') == 'TBW102' and r['ts'] >= NOT_EXIST_TS[0]),
    ('cpp044_get_route_info_by_topic_retry', '105 for %RETRY%CG_CAP (push consumer start)',
     lambda r: is_req(r, 105) and ext(r).get('topic') == '%RETRY%CG_CAP'),
    ('cpp044_send_message_sync', 'SEND_MESSAGE (10) from send_sync: KEYS (2 keys), TAGS, user property',
     lambda r: is_req(r, 10) and 'key-sync-1' in ext(r).get('properties', '')),
    ('cpp044_send_message_oneway_api', '10 from send_oneway(): flag 0, the client does not set the oneway bit',
     lambda r: is_req(r, 10) and 'key-oneway' in ext(r).get('properties', '')),
    ('cpp044_send_message_orderly', '10 from send_orderly(arg=7): queueId chosen by the selector (7 % 4 = 3)',
     lambda r: is_req(r, 10) and 'order-7' in ext(r).get('properties', '')),
    ('cpp044_send_message_delay', '10 with set_delay_time_level(3): property DELAY=3',
     lambda r: is_req(r, 10) and 'key-delay' in ext(r).get('properties', '')),
    ('cpp044_send_message_compressed', '10 with a 6000-byte body: zlib-compressed, sysFlag 1',
     lambda r: is_req(r, 10) and 'key-big' in ext(r).get('properties', '')),
    ('cpp044_send_message_batch', '10 from send_batch(3 msgs): batch "1", batch-encoded body',
     lambda r: is_req(r, 10) and ext(r).get('batch') == '1'),
    ('cpp044_send_message_tbw102_fallback', '10 to TopicCapUnknown after TOPIC_NOT_EXIST, routed via TBW102',
     lambda r: is_req(r, 10) and ext(r).get('topic') == 'TopicCapUnknown'),
    ('cpp044_heartbeat_producer', 'HEART_BEAT (34) of a producer-only client',
     lambda r: is_req(r, 34) and b'consumerDataSet' not in _body(r)),
    ('cpp044_heartbeat_push_consumer', '34 of the push consumer (2 topics + retry, tag expression)',
     lambda r: is_req(r, 34) and b'CG_CAP' in _body(r)),
    ('cpp044_heartbeat_pull_consumer', '34 of the pull consumer (consumeType 0)',
     lambda r: is_req(r, 34) and b'CG_PULL' in _body(r)),
    ('cpp044_get_consumer_list_by_group', 'GET_CONSUMER_LIST_BY_GROUP (38)',
     lambda r: is_req(r, 38)),
    ('cpp044_query_consumer_offset', 'QUERY_CONSUMER_OFFSET (14) TopicCap -> SUCCESS offset 0',
     lambda r: is_req(r, 14) and ext(r).get('topic') == 'TopicCap'),
    ('cpp044_query_consumer_offset_not_found', '14 TopicCapTag -> QUERY_NOT_FOUND (22), which leads to GET_MAX_OFFSET',
     lambda r: is_req(r, 14) and ext(r).get('topic') == 'TopicCapTag'),
    ('cpp044_get_max_offset', 'GET_MAX_OFFSET (30) after the 22',
     lambda r: is_req(r, 30)),
    ('cpp044_update_consumer_offset', 'UPDATE_CONSUMER_OFFSET (15), 5 s persist, sync, commitOffset 3',
     lambda r: is_req(r, 15) and ext(r).get('commitOffset') == '3' and ext(r).get('topic') == 'TopicCap'),
    ('cpp044_pull_message_found', 'PULL_MESSAGE (11) push consumer, TopicCap q0 from 0, sub "*" -> 3 records',
     lambda r: is_req(r, 11) and ext(r).get('topic') == 'TopicCap' and ext(r).get('queueId') == 0
     and ext(r).get('queueOffset') == '0' and ext(r).get('consumerGroup') == 'CG_CAP'),
    ('cpp044_pull_message_found_tag_expression', '11 TopicCapTag q0, sub "TagA || TagB", commitOffset -1 -> 3 records (one TagC, dropped by the client)',
     lambda r: is_req(r, 11) and ext(r).get('topic') == 'TopicCapTag' and ext(r).get('queueId') == 0
     and ext(r).get('queueOffset') == '0'),
    ('cpp044_pull_message_not_found', '11 TopicCap q0 at offset 3, sysFlag 7 (commit+suspend+sub) -> PULL_NOT_FOUND (19) after a 1 s hold',
     lambda r: is_req(r, 11) and ext(r).get('topic') == 'TopicCap' and ext(r).get('queueId') == 0
     and ext(r).get('queueOffset') == '3' and ext(r).get('consumerGroup') == 'CG_CAP'
     and ext(r).get('sysFlag') == 7),
    ('cpp044_pull_message_retry_topic', '11 %RETRY%CG_CAP q0 -> 19',
     lambda r: is_req(r, 11) and ext(r).get('topic') == '%RETRY%CG_CAP'),
    ('cpp044_pull_message_pull_consumer', '11 from PullConsumer.pull (CG_PULL): sysFlag 4, subVersion "0", maxMsgNums 8 -> 3 records',
     lambda r: is_req(r, 11) and ext(r).get('consumerGroup') == 'CG_PULL' and ext(r).get('queueOffset') == '0'),
    ('cpp044_consumer_send_msg_back', 'CONSUMER_SEND_MSG_BACK (36) after RECONSUME_LATER',
     lambda r: is_req(r, 36)),
    ('cpp044_unregister_client_producer', 'UNREGISTER_CLIENT (35) at producer shutdown',
     lambda r: is_req(r, 35) and ext(r).get('producerGroup')),
    ('cpp044_unregister_client_push_consumer', '35 at push consumer shutdown',
     lambda r: is_req(r, 35) and ext(r).get('consumerGroup') == 'CG_CAP'),
]


def _frame(r):
    return bytes.fromhex(r['frame_hex'])


def split(frame):
    hlen = struct.unpack_from('>I', frame, 4)[0] & 0xFFFFFF
    return json.loads(frame[8:8 + hlen].decode('utf-8')), frame[8 + hlen:]


def _body(r):
    return split(_frame(r))[1]


def props(s):
    out = {}
    for part in s.split('\x02'):
        if '\x01' in part:
            k, v = part.split('\x01', 1)
            out[k] = v
    return out


def decode_stored(body):
    recs, p = [], 0
    while p + 4 <= len(body):
        size = struct.unpack_from('>i', body, p)[0]
        b = body[p:p + size]
        (magic, crc, qid, flag, qoff, phys, sysflag, born) = struct.unpack_from('>IiiiqqIq', b, 4)
        q = 84
        blen = struct.unpack_from('>i', b, q)[0]; q += 4
        mbody = b[q:q + blen]; q += blen
        tl = b[q]; q += 1
        topic = b[q:q + tl].decode(); q += tl
        pl = struct.unpack_from('>h', b, q)[0]; q += 2
        recs.append({'storeSize': size, 'magic': '0x%08X' % magic, 'bodyCRC': crc, 'queueId': qid,
                     'flag': flag, 'queueOffset': qoff, 'physicOffset': phys, 'sysFlag': sysflag,
                     'bornTimestamp': born, 'topic': topic, 'body_utf8': mbody.decode('utf-8', 'replace'),
                     'properties': props(b[q:q + pl].decode('utf-8'))})
        p += size
    return recs


def decode_batch(body):
    recs, p = [], 0
    while p + 4 <= len(body):
        size, magic, crc, flag, blen = struct.unpack_from('>iiiii', body, p)
        q = p + 20
        mbody = body[q:q + blen]; q += blen
        pl = struct.unpack_from('>h', body, q)[0]; q += 2
        recs.append({'totalSize': size, 'magicCode': magic, 'bodyCRC': crc, 'flag': flag,
                     'body_utf8': mbody.decode('utf-8', 'replace'),
                     'properties': props(body[q:q + pl].decode('utf-8'))})
        p += size
    return recs


def describe(r):
    frame = _frame(r)
    hdr, body = split(frame)
    d = {'dir': r['dir'], 'port': r['port'], 'conn': r['conn'], 'frame_len': len(frame),
         'header': hdr, 'body_len': len(body)}
    try:
        d['body_utf8'] = body.decode('utf-8')
        if any(ord(c) < 32 and c not in '\n\r\t' for c in d['body_utf8']):
            raise UnicodeDecodeError('utf-8', body, 0, 1, 'control chars')
    except UnicodeDecodeError:
        d.pop('body_utf8', None)
        d['body_hex'] = body.hex()
    e = hdr.get('extFields') or {}
    if isinstance(e.get('properties'), str):
        d['properties_decoded'] = props(e['properties'])
    code = hdr.get('code')
    if r['dir'] == 'c2s' and code == 10 and e.get('batch') == '1':
        d['body_decoded_batch'] = decode_batch(body)
    if r['dir'] == 'c2s' and code == 10 and int(e.get('sysFlag', 0)) & 1:
        raw = zlib.decompress(body)
        d['body_inflated'] = {'len': len(raw), 'utf8_prefix': raw[:64].decode('utf-8', 'replace')}
    if r['dir'] == 's2c' and r.get('_req_code') == 11 and code == 0 and body:
        d['body_decoded_records'] = decode_stored(body)
    return d


def write_json(path, doc):
    with open(path, 'w') as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write('\n')


def main():
    log, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rs = [json.loads(l) for l in open(log)]
    NOT_EXIST_TS[0] = next((r['ts'] for r in rs if r['dir'] == 's2c' and r['code'] == 17),
                           float('inf'))
    index = ['name\tcode\tresp_code\topaque\tflag\treq_frame_len\treq_body_len\tresp_body_len\tdescription']
    for name, desc, pred in SELECTORS:
        req = next((r for r in rs if r['dir'] == 'c2s' and pred(r)), None)
        if req is None:
            print('no match: %s' % name, file=sys.stderr)
            continue
        resp = next((r for r in rs if r['dir'] == 's2c' and r['conn'] == req['conn']
                     and r['opaque'] == req['opaque'] and r['ts'] >= req['ts']), None)
        with open(os.path.join(out, name + '.req.hex'), 'w') as f:
            f.write(req['frame_hex'] + '\n')
        write_json(os.path.join(out, name + '.req.json'), dict(describe(req), fixture=name))
        doc = {'name': name, 'description': desc,
               'client': 'Apache RocketMQ C++ client, librocketmq.so from PyPI rocketmq==0.4.4',
               'server': 'fakesrv.py (responses are the fake server\'s, not a real broker\'s)',
               'request': describe(req)}
        if resp is not None:
            resp = dict(resp, _req_code=req['header'].get('code'))
            with open(os.path.join(out, name + '.resp.hex'), 'w') as f:
                f.write(resp['frame_hex'] + '\n')
            doc['response'] = describe(resp)
            write_json(os.path.join(out, name + '.resp.json'), dict(doc['response'], fixture=name))
        write_json(os.path.join(out, name + '.json'), doc)
        rh = req['header']
        index.append('\t'.join(str(x) for x in (
            name, rh.get('code'), resp['header'].get('code') if resp else '', rh.get('opaque'),
            rh.get('flag'), len(req['frame_hex']) // 2, doc['request']['body_len'],
            doc['response']['body_len'] if resp else '', desc)))
    with open(os.path.join(out, 'INDEX.tsv'), 'w') as f:
        f.write('\n'.join(index) + '\n')
    print('%d fixtures written to %s' % (len(index) - 1, out))


if __name__ == '__main__':
    main()
