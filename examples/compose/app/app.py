#!/usr/bin/env python3
"""A legacy RocketMQ application: the Apache RocketMQ C++ client (PyPI rocketmq==0.4.4) as an
unmodified 4.x app uses it. Its only address is the nameserver, NAMESRV_ADDR=namesrv:9876: it
knows nothing of a sidecar.

It runs a push consumer (CLUSTERING) and, when PRODUCE > 0, produces PRODUCE messages, then tells
what happened and keeps going (one message every KEEP_PRODUCING_EVERY seconds, the consumer
running) so the pod stays up and its metrics keep moving.

Several pods consume in one group; each consumer appends the bodies it got to
TALLY_DIR/<POD_NAME>.consumed, so the producing pod can count what the whole group consumed of
its run. Lines it prints:

  produced 40/100
  consumed 12 here (group total 31/100: app 12, app2 19)
  DONE produced=100 consumed=100 (app 52, app2 48, redelivered 0) in 14.2s

Environment: NAMESRV_ADDR (namesrv:9876), TOPIC (DemoTopic), GROUP (demo_consumers),
PRODUCER_GROUP (demo_producers), POD_NAME (the host name), PRODUCE (0), RATE (messages per
second, 10), WAIT_FOR (pods, comma separated, whose consumers must be up before producing),
TALLY_DIR (/tally), KEEP_PRODUCING_EVERY (seconds, 5; 0: no more sends after DONE), DEADLINE (seconds
for DONE, 300).
"""
import os
import signal
import socket
import sys
import threading
import time

from rocketmq.client import Message, Producer, PushConsumer, SendStatus


def env(name, default):
    return os.environ.get(name, default)


NAMESRV = env('NAMESRV_ADDR', 'namesrv:9876')
TOPIC = env('TOPIC', 'DemoTopic')
GROUP = env('GROUP', 'demo_consumers')
PRODUCER_GROUP = env('PRODUCER_GROUP', 'demo_producers')
POD = env('POD_NAME', socket.gethostname())
PRODUCE = int(env('PRODUCE', '0'))
RATE = float(env('RATE', '10'))
WAIT_FOR = [p for p in env('WAIT_FOR', '').split(',') if p]
TALLY = env('TALLY_DIR', '/tally')
KEEP_EVERY = float(env('KEEP_PRODUCING_EVERY', '5'))
DEADLINE = float(env('DEADLINE', '300'))


def say(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


class Tally:
    """What this pod's consumer got: counted here, appended to TALLY_DIR/<pod>.consumed."""

    def __init__(self):
        os.makedirs(TALLY, exist_ok=True)
        self.lock = threading.Lock()
        self.count = 0
        # The producing pod's run while it waits for the group to consume it: progress lines
        # then show the group's total.
        self.run = None
        self.file = open(os.path.join(TALLY, POD + '.consumed'), 'a', buffering=1)

    def on_message(self, msg):
        body = msg.body.decode('utf-8', 'replace')
        with self.lock:
            self.count += 1
            self.file.write(body + '\n')


def group_seen(run):
    """Per pod, how many deliveries of this run's messages its consumer got, and the distinct
    bodies across the group."""
    per_pod, distinct = {}, set()
    for name in sorted(os.listdir(TALLY)):
        if not name.endswith('.consumed'):
            continue
        pod = name[:-len('.consumed')]
        with open(os.path.join(TALLY, name)) as f:
            mine = [line.strip() for line in f if line.startswith(run + '-')]
        per_pod[pod] = len(mine)
        distinct.update(mine)
    return per_pod, distinct


def start_consumer(tally):
    c = PushConsumer(GROUP)
    c.set_namesrv_addr(NAMESRV)
    c.set_thread_count(2)
    c.subscribe(TOPIC, tally.on_message)
    c.start()
    with open(os.path.join(TALLY, POD + '.ready'), 'w') as f:
        f.write('%d\n' % os.getpid())
    say('consumer of %s started (group %s, nameserver %s)' % (TOPIC, GROUP, NAMESRV))
    return c


def wait_for_peers():
    """The other pods' consumers, so that the group shares this run (bounded: 120 s)."""
    until = time.time() + 120
    missing = list(WAIT_FOR)
    while missing and time.time() < until:
        missing = [p for p in missing if not os.path.exists(os.path.join(TALLY, p + '.ready'))]
        time.sleep(0.5)
    if missing:
        say('not waiting any longer for the consumers of %s' % ', '.join(missing))
    elif WAIT_FOR:
        say('consumers up in %s' % ', '.join(WAIT_FOR))


def send(producer, run, i):
    m = Message(TOPIC)
    m.set_keys('%s-%d' % (run, i))
    m.set_tags('TagA' if i % 2 else 'TagB')
    m.set_property('pod', POD)
    m.set_body('%s-%05d' % (run, i))
    r = producer.send_sync(m)
    if r.status != SendStatus.OK:
        raise RuntimeError('send status %s' % SendStatus(r.status).name)


def shares(per_pod):
    return ', '.join('%s %d' % kv for kv in sorted(per_pod.items()))


def report_progress(tally, stop):
    """Every second, a line when this pod's consumer got more (and the group's total while the
    producing pod waits for it)."""
    last = None
    while not stop.wait(1):
        run = tally.run
        if run:
            per_pod, distinct = group_seen(run)
            now = (tally.count, len(distinct))
            line = 'consumed %d here (group total %d/%d: %s)' % (
                tally.count, len(distinct), PRODUCE, shares(per_pod))
        else:
            now, line = (tally.count, None), 'consumed %d here' % tally.count
        if now != last:
            say(line)
            last = now


def produce_and_count(tally, stop):
    """Produces PRODUCE messages, then waits until the group consumed every one of them and
    prints DONE (or FAILED after DEADLINE seconds or a failed send)."""
    run = 'm%d' % int(time.time())
    producer = Producer(PRODUCER_GROUP, timeout=5000)
    producer.set_namesrv_addr(NAMESRV)
    producer.start()
    wait_for_peers()
    say('producing %d messages to %s at %g/s (run %s)' % (PRODUCE, TOPIC, RATE, run))
    tally.run = run
    t0 = time.time()
    sent = failed = 0
    for i in range(PRODUCE):
        if stop.is_set():
            break
        try:
            send(producer, run, i)
            sent += 1
        except Exception as e:  # the app goes on, as a real one would, and counts it
            failed += 1
            say('send %d failed: %s' % (i, e))
        if (i + 1) % 10 == 0 or i + 1 == PRODUCE:
            say('produced %d/%d' % (sent, PRODUCE))
        stop.wait(max(0.0, t0 + (i + 1) / RATE - time.time()))
    say('produced %d/%d in %.1fs, %d failed' % (sent, PRODUCE, time.time() - t0, failed))
    while not stop.is_set():
        per_pod, distinct = group_seen(run)
        redelivered = sum(per_pod.values()) - len(distinct)
        summary = 'produced=%d consumed=%d (%s, redelivered %d) in %.1fs' % (
            sent, len(distinct), shares(per_pod), redelivered, time.time() - t0)
        if len(distinct) >= sent:
            say(('DONE ' if sent == PRODUCE else 'FAILED ') + summary)
            break
        if time.time() - t0 > DEADLINE:
            say('FAILED ' + summary)
            break
        stop.wait(0.5)
    tally.run = None
    return producer, run


def main():
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tally = Tally()
    consumer = start_consumer(tally)
    threading.Thread(target=report_progress, args=(tally, stop), daemon=True).start()
    producer, run, i = None, None, PRODUCE
    if PRODUCE > 0:
        producer, run = produce_and_count(tally, stop)
    if producer and KEEP_EVERY > 0 and not stop.is_set():
        say('then one message every %gs' % KEEP_EVERY)
        while not stop.wait(KEEP_EVERY):
            try:
                send(producer, run, i)
                i += 1
                say('produced %d' % i)
            except Exception as e:
                say('send %d failed: %s' % (i, e))
    while not stop.wait(1):
        pass
    say('stopping: consumed %d here' % tally.count)
    consumer.shutdown()
    if producer:
        producer.shutdown()
    sys.stdout.flush()
    os._exit(0)  # the client objects' destructors would shut them down a second time


if __name__ == '__main__':
    main()
