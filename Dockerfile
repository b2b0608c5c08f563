# The segmentation service (and the challenge entry point, predict.sh) on python:3.11-slim.
#
#   docker build -t segvol-interactive .                                   # CPU (default)
#   docker build -t segvol-interactive:cu128 --build-arg TORCH_VARIANT=cu128 .   # CUDA 12.8 build of torch
#   docker run --rm -p 8000:8000 segvol-interactive
#   docker run --rm --gpus all -p 8000:8000 segvol-interactive:cu128 python -m app --host 0.0.0.0 --device cuda:0
#
# torch is installed first from the PyTorch index of TORCH_VARIANT (cpu, cu126, cu128, ...; TORCH_INDEX_URL
# overrides the whole URL), at the version pyproject.toml pins; the project install that follows is the README's
# install command, exactly (no extras: CI proves each run that it serves, .ci/readme_install_check.sh), and keeps
# that build, as a local version label (+cpu, +cu128) satisfies the pin.
# See docs/deploy.md.
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUTF8=1 \
    LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Its own layer: the largest download, unchanged by source edits.
RUN python3 -m pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

# /workspace: the challenge evaluator mounts its inputs/ and outputs/ here and runs `sh predict.sh`.
WORKDIR /workspace
COPY . .
RUN python3 -m pip install -e .

RUN useradd --create-home --uid 10001 --user-group segsvc \
    && mkdir -p /data \
    && chown segsvc:segsvc /data
USER segsvc
ENV SEGSVC_STORAGE_DIR=/data

EXPOSE 8000
# Liveness only (/healthz answers as soon as the process serves); readiness is /readyz. No curl in slim images.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "app", "--host", "0.0.0.0"]
