#!/usr/bin/env python3
"""hold_until_ready.py URL -- COMMAND...: waits until URL answers 200, then becomes COMMAND.

The application container's entrypoint in examples/compose: compose has no native sidecars, so,
like Istio's holdApplicationUntilProxyStarts, the application's process starts only once its
pod's sidecar is ready (http://127.0.0.1:15000/ready). The sidecar starts only after the init
container installed the redirect rules, so by then every connection the application opens to
namesrv:9876 goes through the sidecar. Gives up (exit 1) after HOLD_SECONDS (default 300).
"""
import os
import sys
import time
import urllib.error
import urllib.request


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main():
    if len(sys.argv) < 4 or sys.argv[2] != '--':
        sys.exit('usage: hold_until_ready.py URL -- COMMAND...')
    url, command = sys.argv[1], sys.argv[3:]
    limit = float(os.environ.get('HOLD_SECONDS', '300'))
    t0 = time.time()
    print('waiting for the sidecar: %s' % url, flush=True)
    while not ready(url):
        if time.time() - t0 > limit:
            sys.exit('the sidecar was not ready at %s within %.0fs' % (url, limit))
        time.sleep(0.5)
    print('sidecar ready after %.1fs' % (time.time() - t0), flush=True)
    os.execvp(command[0], command)


if __name__ == '__main__':
    main()
