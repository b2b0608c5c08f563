#!/usr/bin/env bash
# The SDK installed alone, as a user of the service installs it: `pip install ./client` into a fresh virtual
# environment, which must then hold httpx, numpy and websockets but no torch, pydantic or server; the SDK
# imports there and does a round trip against a running server (.ci/sdk_round_trip.py: upload, box, click
# on the stream, mask download, info, close).
#
#   .ci/sdk_install_check.sh BASE_URL VOLUME SAMPLE_JSON   # against a running server (the README check's)
#   .ci/sdk_install_check.sh                               # starts a server of this checkout itself
#
# SAMPLE_JSON: {"shape": [D, H, W], "box": [...], "click": [z, y, x]} of VOLUME. Exit status 0 = it all worked.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
outer_python="$(command -v python3)"
CHECK_NAME="sdk install check"
# shellcheck source=check_lib.sh
source "$repo/.ci/check_lib.sh"

if [ $# -eq 3 ]; then
    base_url="$1" volume="$2" sample="$3"
elif [ $# -eq 0 ]; then
    # No server given: this checkout's, with the sample volume and its numbers from the same package.
    volume="$work/ct.nii.gz"
    (cd "$repo" && "$outer_python" -m app sample-volume "$volume") >"$work/sample.log" 2>&1 \
        || fail "writing the sample volume" "$work/sample.log"
    sample="$(cd "$repo" && "$outer_python" -c 'import json; from app.io import sample_volume as s
print(json.dumps({"shape": s.SHAPE, "box": s.ORGAN_BOX, "click": s.ORGAN_CENTER}))')"
    port="$("$outer_python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    (cd "$repo" && SEGSVC_PORT="$port" exec "$outer_python" -m app) >"$work/server.log" 2>&1 &
    server_pid=$!
    base_url="http://127.0.0.1:$port"
    deadline=$((SECONDS + ${SDK_CHECK_READY_TIMEOUT_S:-300}))
    until "$outer_python" -c "import urllib.request as u; u.urlopen('$base_url/readyz', timeout=2)" 2>/dev/null; do
        kill -0 "$server_pid" 2>/dev/null || fail "the server exited during start-up" "$work/server.log"
        [ "$SECONDS" -lt "$deadline" ] || fail "the server was not ready in time" "$work/server.log"
        sleep 1
    done
else
    fail "expected BASE_URL VOLUME SAMPLE_JSON, or no arguments"
fi

# The SDK's folder alone (a copy: the build writes nothing into the checkout), in a venv of its own.
cp -r "$repo/client" "$work/sdk-src"
rm -rf "$work/sdk-src/build" "$work/sdk-src"/*.egg-info
python3 -m venv "$work/sdk-venv" || fail "python3 -m venv"
sdk_python="$work/sdk-venv/bin/python"
echo "sdk install check: + pip install ./client (a fresh venv)"
(cd "$work" && env -u PYTHONPATH "$sdk_python" -m pip install -q ./sdk-src) >"$work/install.log" 2>&1 \
    || fail "pip install ./client" "$work/install.log"

# Nothing of the server's stack came with it.
env -u PYTHONPATH "$sdk_python" -m pip list --format=freeze >"$work/freeze.txt" 2>/dev/null
for absent in torch pydantic fastapi segvol-interactive; do
    if grep -qi "^${absent}==" "$work/freeze.txt"; then
        fail "the SDK's install brought $absent" "$work/freeze.txt"
    fi
done
(cd "$work" && env -u PYTHONPATH "$sdk_python" -c "import torch") >/dev/null 2>&1 \
    && fail "torch imports in the SDK-only venv"
(cd "$work" && env -u PYTHONPATH "$sdk_python" -c "import app") >/dev/null 2>&1 \
    && fail "the server package imports in the SDK-only venv"

# Run from an empty folder, so that only the installed package can answer `import client`.
mkdir "$work/user"
(cd "$work/user" && env -u PYTHONPATH "$sdk_python" "$repo/.ci/sdk_round_trip.py" "$base_url" "$volume" "$sample") \
    >"$work/round_trip.log" 2>&1 || fail "the SDK round trip" "$work/round_trip.log"
grep -q "$work/sdk-venv" "$work/round_trip.log" || fail "the round trip did not use the installed SDK" "$work/round_trip.log"
echo "sdk install check: ok ($(tail -n 1 "$work/round_trip.log"))"
