#!/bin/sh
# CVPR 2025 interactive segmentation challenge entry point: the evaluator runs `sh predict.sh` once per round
# with the round's inputs mounted at /workspace/inputs and collects /workspace/outputs. Every argument is passed
# on to `python -m challenge` (e.g. --config, --weights, --device, --mode); see docs/challenge.md.
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m challenge \
    --inputs "${CHALLENGE_INPUTS:-/workspace/inputs}" \
    --outputs "${CHALLENGE_OUTPUTS:-/workspace/outputs}" \
    "$@"
