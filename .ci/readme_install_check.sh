#!/usr/bin/env bash
# First contact, as a new user meets it: a fresh clone of the committed tree, a fresh virtual environment, the
# README's install command exactly as written (no extras), the server started as the README starts it, then
# the README's sample-volume command and SDK snippet (upload, box, click, mask download, close) against it;
# then the SDK installed alone, without torch, against the same server (.ci/sdk_install_check.sh).
# Catches a module the server or the SDK imports that only an extra installs (the test run installs
# '.[dev]', which hides that). Every command is read from README.md (tests/readme_snippets.py), so the check
# and the README cannot drift apart.
#
#   .ci/readme_install_check.sh            # from anywhere in the repository; exit status 0 = it all worked
#
# It checks the committed tree (a clone), so commit before running it by hand. README_CHECK_READY_TIMEOUT_S
# (default 300) bounds the server's start-up. On a failure it names the step and prints the end of its log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
ready_timeout_s="${README_CHECK_READY_TIMEOUT_S:-300}"

CHECK_NAME="readme install check"
# shellcheck source=check_lib.sh
source "$repo/.ci/check_lib.sh"

# A user's clone: only committed files (no build outputs, caches or untracked weights of this checkout).
git clone -q --no-local "$repo" "$work/clone" || fail "git clone of $repo"
python3 -m venv "$work/venv" || fail "python3 -m venv"
# The new user's shell: the venv's python3 first, nothing of this job's Python setup or service settings.
export PATH="$work/venv/bin:$PATH" VIRTUAL_ENV="$work/venv"
unset PYTHONPATH PYTHONHOME REDIS_URL
while IFS= read -r name; do unset "$name"; done < <(env | sed -n 's/^\(SEGSVC_[A-Za-z0-9_]*\)=.*/\1/p')

cd "$work/clone"
install_cmd="$(python3 tests/readme_snippets.py install)" || fail "reading the install command from README.md"
serve_cmd="$(python3 tests/readme_snippets.py serve)" || fail "reading the server command from README.md"
sample_cmd="$(python3 tests/readme_snippets.py sample)" || fail "reading the sample-volume command from README.md"

echo "readme install check: + $install_cmd"
bash -c "$install_cmd" >"$work/install.log" 2>&1 || fail "the README install command: $install_cmd" "$work/install.log"

# Every module of the installed server, SDK and challenge packages imports with the base dependencies alone
# (the routes load some lazily, which the round trip below might not reach).
python3 - >"$work/imports.log" 2>&1 <<'PY' || fail "a module needs a package the README install does not install" "$work/imports.log"
import importlib
import pkgutil

failed = []
for package in ("app", "client", "challenge"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # report every failure, not just the first
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\n".join(failed) or "all modules import")
raise SystemExit(1 if failed else 0)
PY

# The README's server command, as written; only the port comes from the environment (a free one, so that a
# server already on 8000 cannot answer in its place).
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "readme install check: + SEGSVC_PORT=$port $serve_cmd"
SEGSVC_PORT="$port" bash -c "exec $serve_cmd" >"$work/server.log" 2>&1 &
server_pid=$!
base_url="http://127.0.0.1:$port"
deadline=$((SECONDS + ready_timeout_s))
until python3 -c "import urllib.request as u; u.urlopen('$base_url/readyz', timeout=2)" 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited during start-up" "$work/server.log"
    [ "$SECONDS" -lt "$deadline" ] || fail "the server was not ready after $ready_timeout_s s" "$work/server.log"
    sleep 1
done

mkdir "$work/user" && cd "$work/user"
echo "readme install check: + $sample_cmd"
bash -c "$sample_cmd" >"$work/sample.log" 2>&1 || fail "the README sample-volume command" "$work/sample.log"
python3 "$work/clone/tests/readme_snippets.py" sdk "$base_url" >snippet.py || fail "reading the SDK snippet from README.md"
python3 snippet.py >"$work/snippet.log" 2>&1 || fail "the README SDK snippet" "$work/snippet.log"
python3 - >>"$work/snippet.log" 2>&1 <<'PY' || fail "the mask the snippet downloaded" "$work/snippet.log"
import numpy as np
import SimpleITK as sitk

from app.io.sample_volume import ORGAN_CENTER, SHAPE

mask = sitk.GetArrayFromImage(sitk.ReadImage("mask.nii.gz"))
assert mask.shape == SHAPE, f"mask.nii.gz: shape {mask.shape}, expected {SHAPE}"
assert mask[ORGAN_CENTER] == 1, "mask.nii.gz: the clicked organ centre is not in the mask"
print(f"mask.nii.gz: {int(np.count_nonzero(mask))} foreground voxels")
PY
kill -0 "$server_pid" 2>/dev/null || fail "the server died during the round trip" "$work/server.log"
echo "readme install check: ok ($(tail -n 1 "$work/snippet.log"))"

# The SDK installed alone (its own distribution, no torch) against the same server and sample volume.
sample_numbers="$(python3 -c 'import json; from app.io import sample_volume as s
print(json.dumps({"shape": s.SHAPE, "box": s.ORGAN_BOX, "click": s.ORGAN_CENTER}))')" \
    || fail "reading the sample volume's numbers"
"$work/clone/.ci/sdk_install_check.sh" "$base_url" "$work/user/ct.nii.gz" "$sample_numbers" \
    || fail "the SDK installed alone (.ci/sdk_install_check.sh)"
kill -0 "$server_pid" 2>/dev/null || fail "the server died during the SDK round trip" "$work/server.log"
