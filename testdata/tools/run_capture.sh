#!/bin/bash
# Capture real Apache RocketMQ C++ client frames (PyPI rocketmq==0.4.4) against fakesrv.py, then cut
# them into fixtures. Loopback only (127.0.0.1:19876 name server, 127.0.0.1:19911 broker); every
# process is bounded by `timeout`, the whole run takes about 90 s.
#
#   usage: run_capture.sh WORKDIR        (WORKDIR gets venv/, home/, frames.jsonl and out/)
#
# The C++ client writes its logs under $HOME/logs/rocketmq-cpp, so HOME is pointed at WORKDIR/home.
# Needs network access to PyPI only for the first venv install.
set -u
TOOLS="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mkdir -p "${1:?usage: run_capture.sh WORKDIR}" && cd "$1" && pwd)"
cd "$WORK"
[ -x venv/bin/python ] || { python3 -m venv venv && venv/bin/pip install -q rocketmq==0.4.4; }
mkdir -p home
LOG="$WORK/frames.jsonl"
rm -f "$LOG"
timeout 130 python3 "$TOOLS/fakesrv.py" "$LOG" 120 > fakesrv.out 2>&1 &
SRV=$!
sleep 1
for phase in "producer 40" "consumer 55" "pull 30"; do
  set -- $phase
  HOME="$WORK/home" timeout "$2" venv/bin/python "$TOOLS/cpp_driver.py" "$1"
done
sleep 2
kill "$SRV" 2>/dev/null
wait "$SRV" 2>/dev/null
echo "frames logged: $(wc -l < "$LOG")"
rm -rf out
python3 "$TOOLS/cut_fixtures.py" "$LOG" out
