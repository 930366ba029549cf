#!/usr/bin/env bash
# Builds corpus/decode_frame/ from every captured frame in testdata/frames/ (hex -> bytes, with a
# leading split byte as the fuzz target expects).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/corpus/decode_frame"
mkdir -p "$out"
find "$here/../../testdata/frames" -name '*.hex' | while read -r f; do
  name="$(basename "$f" .hex)"
  python3 - "$f" "$out/$name" <<'PY'
import sys
data = bytes.fromhex(open(sys.argv[1]).read().strip())
open(sys.argv[2], "wb").write(bytes([min(len(data) // 2, 255)]) + data)
PY
done
echo "seeded $(ls "$out" | wc -l) inputs into $out"
