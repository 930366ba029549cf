#!/usr/bin/env python3
"""Drive the Apache RocketMQ C++ client (librocketmq.so shipped in PyPI rocketmq==0.4.4, used through
its Python ctypes API) against fakesrv.py, to capture real client frames. Loopback only.

Re-run: run_capture.sh WORKDIR does all of this (venv, server, 3 phases, cutting). By hand:
    python3 -m venv venv && venv/bin/pip install rocketmq==0.4.4
    timeout 130 python3 fakesrv.py frames.jsonl 120 &
    timeout 40 venv/bin/python cpp_driver.py producer
    timeout 55 venv/bin/python cpp_driver.py consumer
    timeout 30 venv/bin/python cpp_driver.py pull
    python3 cut_fixtures.py frames.jsonl out

Phases:
  producer  group PG_CAP: send_sync (keys/tags/user property), send_oneway, send_orderly,
            send_oneway_orderly, delay level 3, a 6000-byte body (compression), send_batch,
            a send to an unknown topic (TBW102 fallback); then shutdown (UNREGISTER_CLIENT).
  consumer  push consumer group CG_CAP: TopicCap "*" and TopicCapTag "TagA || TagB"; the message
            whose body contains "please-fail" gets RECONSUME_LATER once (CONSUMER_SEND_MSG_BACK);
            runs CONSUMER_SECONDS then shuts down.
  pull      pull consumer group CG_PULL: fetch queues of TopicCap and pull each once to the end.
"""
import sys
import time

from rocketmq.client import Message, Producer, PushConsumer, PullConsumer
from rocketmq.ffi import dll
from rocketmq.exceptions import ffi_check

NAMESRV = '127.0.0.1:19876'
CONSUMER_SECONDS = 30


def msg(topic, body, tags=None, keys=None, props=None, delay=None):
    m = Message(topic)
    if keys:
        m.set_keys(keys)
    if tags:
        m.set_tags(tags)
    for k, v in (props or {}).items():
        m.set_property(k, v)
    if delay:
        m.set_delay_time_level(delay)
    m.set_body(body)
    return m


def step(name, fn):
    try:
        r = fn()
        print('%-20s ok %r' % (name, r), flush=True)
    except Exception as e:  # noqa: keep going, the point is the frames
        print('%-20s FAILED %r' % (name, e), flush=True)
    time.sleep(0.5)


def producer():
    p = Producer('PG_CAP', timeout=3000)
    p.set_namesrv_addr(NAMESRV)
    p.start()
    step('sync', lambda: p.send_sync(msg('TopicCap', 'hello sync', 'TagA', 'key-sync-1 key-sync-2',
                                         {'userProp': 'v1'})))
    step('oneway', lambda: p.send_oneway(msg('TopicCap', 'hello oneway', 'TagB', 'key-oneway')))
    step('orderly', lambda: p.send_orderly(msg('TopicCap', 'hello orderly', 'TagA', 'order-7'), 7))
    step('oneway_orderly', lambda: p.send_oneway_orderly(
        msg('TopicCap', 'hello oneway orderly', 'TagA', 'order-5'), 5))
    step('delay', lambda: p.send_sync(msg('TopicCap', 'hello delay', 'TagA', 'key-delay', delay=3)))
    big = ('0123456789abcdef-compress-me-' * 250)[:6000]
    step('big', lambda: p.send_sync(msg('TopicCap', big, 'TagBig', 'key-big')))
    step('batch', lambda: p.send_batch([msg('TopicCap', 'batch %d' % i, 'TagA', 'key-batch-%d' % i)
                                        for i in range(3)]))
    step('unknown_topic', lambda: p.send_sync(msg('TopicCapUnknown', 'hello new topic', 'TagN',
                                                  'key-new')))
    time.sleep(1)
    p.shutdown()
    print('producer done', flush=True)


def consumer():
    c = PushConsumer('CG_CAP')
    c.set_namesrv_addr(NAMESRV)
    c.set_thread_count(1)
    c.set_message_batch_max_size(1)
    seen = {}

    def on_message(_consumer, cmsg):
        body = dll.GetMessageBody(cmsg) or b''
        topic = dll.GetMessageTopic(cmsg)
        n = seen.get(body, 0)
        seen[body] = n + 1
        status = 1 if (b'please-fail' in body and n == 0) else 0
        print('consume %s %r -> %s' % (topic, body, 'RECONSUME_LATER' if status else 'SUCCESS'),
              flush=True)
        return status

    ffi_check(dll.Subscribe(c._handle, b'TopicCap', b'*'))
    ffi_check(dll.Subscribe(c._handle, b'TopicCapTag', b'TagA || TagB'))
    c._register_callback(on_message)
    c.start()
    time.sleep(CONSUMER_SECONDS)
    c.shutdown()
    print('consumer done', flush=True)


def pull():
    pc = PullConsumer('CG_PULL')
    pc.set_namesrv_addr(NAMESRV)
    pc.start()
    deadline = time.time() + 15
    for m in pc.pull('TopicCap', 'TagA || TagB', 8):
        print('pulled', m.topic, m.body, flush=True)
        if time.time() > deadline:
            break
    pc.shutdown()
    print('pull done', flush=True)


if __name__ == '__main__':
    {'producer': producer, 'consumer': consumer, 'pull': pull}[sys.argv[1]]()
