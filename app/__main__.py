"""``python -m app``: run the service with uvicorn, one worker process (sessions live in this process).

    python -m app                                   # 127.0.0.1:8000, compact model, shipped weights
    python -m app --port 9000 --config segvol-base --weights /path/to/segvol.pt --device cuda:0
    REDIS_URL=redis://127.0.0.1:6379/0 python -m app          # metadata in Redis
    python -m app --redis-url redis://127.0.0.1:6379/0 --storage-dir /var/lib/segsvc   # survives restarts
    python -m app --config segvol-test --random-weights       # tests / timing only: untrained model
    python -m app --api-key-hash "$(python -m app hash-key < key.txt)" --rate-limit 5   # API key + limit
    python -m app hash-key < key.txt                          # print the sha256 of a key read from stdin
    python -m app --nninteractive                             # + nnInteractive's protocol at /nninteractive
    python -m app sample-volume ct.nii.gz                     # write a synthetic CT to try the service on

Flags override the environment (``SEGSVC_*``, ``REDIS_URL``), which overrides the defaults. Run one such
process per device; put several behind a router that pins each session id to its process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app", description="Interactive 3D segmentation service.")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument("--config", dest="model_config_name", help="model configuration (default compact)")
    p.add_argument("--weights", help='checkpoint path, or "default" for the weights shipped with the config')
    p.add_argument("--random-weights", action="store_true",
                   help="serve a randomly initialised model (tests and timing benchmarks only)")
    p.add_argument("--device", help='"auto" (default), "cpu" or "cuda:N"')
    p.add_argument("--zoom-in", dest="zoom_in", choices=("auto", "segvol", "windows", "resample"),
                   help="inference path (default auto: the weights' metadata, else the config's default)")
    p.add_argument("--text-prompts", dest="text_prompts", action="store_true", default=None,
                   help="build SegVol's text branch so objects can be prompted by name (segvol configs)")
    p.add_argument("--text-tokenizer", help="CLIP tokenizer files (default: CLIP's vocabulary from open-clip-torch)")
    p.add_argument("--redis-url", help="metadata store URL (default: $REDIS_URL, else in-process)")
    p.add_argument("--storage-dir", help="directory for uploaded volumes and masks; with --redis-url, sessions "
                   "are restored after a restart (default: none, no persistence)")
    p.add_argument("--max-sessions", type=int)
    p.add_argument("--max-device-bytes", type=int)
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, help="seconds")
    p.add_argument("--max-session-age", dest="max_session_age_s", type=float, help="seconds")
    p.add_argument("--reaper-interval", dest="reaper_interval_s", type=float, help="seconds")
    p.add_argument("--max-upload-bytes", type=int)
    p.add_argument("--max-voxels", type=int)
    p.add_argument("--api-key-hash", dest="api_key_hashes", action="append", metavar="SHA256",
                   help="sha256 hex of an accepted API key (repeatable; see `python -m app hash-key`); "
                   "none = no API key needed")
    p.add_argument("--rate-limit", dest="rate_limit_per_s", type=float,
                   help="prompts and session creations per second per API key / client address")
    p.add_argument("--rate-limit-burst", type=int, help="requests allowed at once above the rate")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="origin allowed by CORS (repeatable)")
    p.add_argument("--replica-id", help="this replica's name among several behind a router (needs --redis-url "
                   "and a shared --storage-dir)")
    p.add_argument("--directory-ttl", dest="directory_ttl_s", type=float, help="replica heartbeat lifetime, seconds")
    p.add_argument("--trust-session-id-header", action="store_true",
                   help="take the session id of a new session from the router's X-Session-Id header")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass")
    p.add_argument("--independent-objects", action="store_true",
                   help="segment each object on its own prompts only (objects may overlap); default: a session's "
                        "objects are one label map's, one object's foreground click is background to the others")
    p.add_argument("--click-propagation-reach", dest="click_propagation_reach", type=float,
                   help="geodesic click propagation reach in ROI frame voxels (0: off; default 15)")
    p.add_argument("--click-region-reach", dest="click_region_reach", type=float,
                   help="click regions' reach in ROI frame voxels (0: off; default 30)")
    p.add_argument("--dicomweb-url", help="DICOMweb root (QIDO/WADO/STOW) to read series from and store SEGs to")
    p.add_argument("--monailabel", dest="monailabel_enabled", action="store_true", default=None,
                   help="serve the MONAI Label compatibility routes (OHIF, 3D Slicer)")
    p.add_argument("--monailabel-open", dest="monailabel_open", action="store_true", default=None,
                   help="with API keys, let the MONAI Label routes through without a key (trusted network only)")
    p.add_argument("--max-volume-bytes", type=int,
                   help="largest voxel data an upload's header may declare (bytes, checked before inflating)")
    p.add_argument("--max-request-body-bytes", type=int,
                   help="largest body of a request that is not a file upload (JSON prompts, forms)")
    p.add_argument("--forwarded-allow-ip", dest="forwarded_allow_ips", action="append", metavar="ADDRESS",
                   help="a reverse proxy's address or network whose X-Forwarded-For is trusted (repeatable; "
                        "default: none, the client is the TCP peer)")
    p.add_argument("--monailabel-datastore", help="directory of the MONAI Label datastore (uploaded images, saved "
                   "labels; default: <storage-dir>/monailabel.datastore)")
    p.add_argument("--nninteractive", dest="nninteractive_enabled", action="store_true", default=None,
                   help="serve nnInteractive's remote protocol at /nninteractive (nninteractive-client 2.6)")
    p.add_argument("--nninteractive-liveness-timeout", dest="nninteractive_liveness_timeout_s", type=float,
                   help="seconds without any request (heartbeats included) before a lease is released")
    p.add_argument("--admission-max-queue", type=int,
                   help="refuse new sessions (503) while more heavy device calls are queued (default 8)")
    p.add_argument("--admission-max-wait-ms", type=float,
                   help="refuse new sessions (503) while the recent device queue wait p95 is above this (default 150)")
    p.add_argument("--admission-max-queued-share", type=float,
                   help="refuse new sessions (503) while device calls were queued more than this share of the "
                   "recent window (default 0.3)")
    p.add_argument("--no-admission", action="store_true", help="admit new sessions by count and bytes only")
    p.add_argument("--keep-alive-timeout", dest="keep_alive_timeout_s", type=float,
                   help="seconds an idle keep-alive connection stays open (default 75)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p.parse_args(argv)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("host", "port", "model_config_name", "weights", "device", "redis_url", "storage_dir", "max_sessions",
            "max_device_bytes", "idle_timeout_s", "max_session_age_s", "reaper_interval_s", "max_upload_bytes",
            "max_voxels", "api_key_hashes", "rate_limit_per_s", "rate_limit_burst", "cors_origins",
            "dicomweb_url", "monailabel_enabled", "monailabel_open", "monailabel_datastore", "click_propagation_reach",
            "click_region_reach", "max_volume_bytes", "max_request_body_bytes", "forwarded_allow_ips",
            "nninteractive_enabled", "nninteractive_liveness_timeout_s", "text_prompts", "text_tokenizer",
            "zoom_in", "admission_max_queue", "admission_max_wait_ms", "admission_max_queued_share",
            "keep_alive_timeout_s")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key in ("replica_id", "directory_ttl_s"):  # several replicas (docs/reliability.md)
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.random_weights:
        if args.weights is not None:
            raise SystemExit("--random-weights and --weights are exclusive")
        overrides.update(weights=None, allow_random_weights=True)
    if args.no_admission:
        overrides.update(admission_max_queue=None, admission_max_wait_ms=None, admission_max_queued_share=None,
                         admission_max_creating=None, admission_paced_admissions=None)
    if args.no_warmup:
        overrides["warmup"] = False
    if args.independent_objects:
        overrides["exclusive_objects"] = False
    if args.trust_session_id_header:
        overrides["trust_session_id_header"] = True
    return overrides


def hash_key_command(stdin: str) -> str:
    """``python -m app hash-key``: the sha256 hex of the key on stdin (one trailing newline ignored)."""
    from app.config import hash_api_key

    key = stdin[:-1] if stdin.endswith("\n") else stdin
    key = key[:-1] if key.endswith("\r") else key
    if not key:
        raise SystemExit("hash-key: expected the API key on stdin")
    return hash_api_key(key)


def sample_volume_command(argv: Sequence[str]) -> str:
    """``python -m app sample-volume [PATH]``: write the synthetic CT (default ``ct.nii.gz``); a summary."""
    from app.io.sample_volume import ORGAN_BOX, ORGAN_CENTER, SHAPE, SPACING, write_sample_volume

    p = argparse.ArgumentParser(prog="python -m app sample-volume",
                                description="Write a small synthetic CT (no patient data) to try the service on.")
    p.add_argument("path", nargs="?", default="ct.nii.gz", help="output file: .nii.gz, .nii, .nrrd or .mha")
    args = p.parse_args(argv)
    try:
        out = write_sample_volume(args.path)
    except ValueError as err:
        p.error(str(err))
    return (f"{out}: synthetic CT, shape (D, H, W) {SHAPE}, spacing (sz, sy, sx) {SPACING} mm; "
            f"one organ in the voxel box {list(ORGAN_BOX)}, centre {list(ORGAN_CENTER)}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-key"]:
        print(hash_key_command(sys.stdin.read()))
        return
    if argv[:1] == ["sample-volume"]:
        print(sample_volume_command(argv[1:]))
        return

    import uvicorn

    from app.api.log_redaction import install_on_root
    from app.config import Settings
    from app.main import create_app

    args = parse_args(argv)
    settings = Settings(**settings_overrides(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_on_root()
    # The app object (not an import string) is passed: uvicorn runs it in this one process.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                log_level=args.log_level, ws_max_size=1 << 20, **uvicorn_options(settings))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Proxy trust, keep-alive and log redaction, as uvicorn takes them.

    uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 unless told otherwise, so any local client could pick
    its own address (and its own rate-limit bucket) by sending the header: trust is off unless
    ``forwarded_allow_ips`` names the proxies.
    """
    from uvicorn.config import LOGGING_CONFIG

    from app.api.log_redaction import uvicorn_log_config

    trusted = list(settings.forwarded_allow_ips)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
            "timeout_keep_alive": settings.keep_alive_timeout_s, "log_config": uvicorn_log_config(LOGGING_CONFIG)}


if __name__ == "__main__":
    main()
