"""Service configuration (pydantic-settings).

Every field can be set from the environment with the ``SEGSVC_`` prefix (``SEGSVC_PORT=9000``,
``SEGSVC_MAX_SESSIONS=4``); the metadata store URL is also read from the plain ``REDIS_URL``.
``python -m app`` maps its command-line flags onto the same fields.

With ``storage_dir`` (``SEGSVC_STORAGE_DIR``) and Redis, sessions survive a restart or a crash of the
process (``docs/reliability.md``).

API keys (``api_key_hashes``) are configured as sha256 hex digests, never as the keys themselves
(``python -m app hash-key`` prints the digest of a key read from stdin). No keys configured = any client
that can reach the port may create sessions (``docs/service.md``, Authentication).

Model weights are never silently replaced by random ones: ``weights=None`` (random init, for tests and
timing benchmarks only) is refused unless ``allow_random_weights`` is set as well.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from app.io.volumes import VolumeLimits

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The sha256 hex digest of an API key, as ``api_key_hashes`` holds it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Settings(BaseSettings):
    """Everything the server process needs to know; one instance per process, built once."""

    model_config = SettingsConfigDict(env_prefix="SEGSVC_", protected_namespaces=(), extra="ignore")

    # Network.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = none.")

    # Access control (docs/service.md, Authentication).
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of the accepted API keys (X-API-Key); empty = no API key needed. "
        "Environment: a JSON list or comma-separated.",
    )
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="Prompts and session creations per second per API key (per client IP without "
        "keys); None = no rate limit.",
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="Requests allowed at once above the steady rate (None = max(1, rate)).",
    )

    # Model.
    device: str = Field("auto", description='"auto" (CUDA when present, else CPU), "cpu" or "cuda:N".')
    model_config_name: str = Field("compact", description="A registered model configuration name.")
    weights: str | None = Field(
        "default", description='"default" = the weights shipped for the config, a checkpoint path, or None.'
    )
    allow_random_weights: bool = Field(False, description="Required for weights=None (random init).")
    zoom_in: Literal["auto", "segvol", "windows", "resample"] = Field(
        "auto", description="Inference path (PredictorConfig.zoom_in): auto = the weights' metadata, else the "
        "config's default (segvol-base: SegVol's own inference, docs/segvol-parity.md).")
    text_prompts: bool = Field(
        False, description="Build SegVol's CLIP text branch (segvol configs; the 'text' extra) so that objects can "
        "be prompted by name (POST .../objects/{id}/text); its weights come from the checkpoint.")
    text_tokenizer: str | None = Field(
        None, description="CLIP tokenizer files for text prompts (a tokenizer.json or a folder holding one); "
        "None = CLIP's vocabulary from the open-clip-torch package.")
    warmup: bool = Field(True, description="Run one tiny session through the model before accepting traffic.")
    seed: int = Field(0, description="Base seed of every session (prompt-log replays are bit-identical).")
    exclusive_objects: bool = Field(
        True,
        description="A session's objects are the labels of one label map: one object's foreground click is a "
        "background click to the others (SessionState.exclusive_objects). False: objects may overlap.",
    )
    click_propagation_reach: float = Field(
        15.0, ge=0, allow_inf_nan=False,
        description="Geodesic click propagation on boxed objects: a click also labels the voxels of similar "
        "intensity around it, up to this many ROI-frame voxels away (app.models.propagation); 0 = off, a "
        "click acts only through the model.",
    )
    click_region_reach: float = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="Click regions on boxed objects: a click also flips the connected region of similar "
        "intensity on the wrong side of the object's previous mask that it points at (a false-positive blob, "
        "a missed part), up to this many ROI-frame voxels away, for foreground and background clicks alike "
        "(app.models.click_regions); 0 = off.",
    )

    # Capacity and limits.
    max_sessions: int = Field(8, ge=1, description="Live sessions held by this process at most.")
    max_device_bytes: int | None = Field(
        None, ge=1, description="Device bytes all sessions may hold together (None = no byte limit)."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 when the server is full.")
    admission_max_queue: int | None = Field(
        8, ge=0, description="Load shedding: new sessions get 503 + Retry-After while more than this many heavy "
        "device calls (decoder steps, encodes, mask reads) are queued (app.sessions.admission); None = off.",
    )
    admission_max_wait_ms: float | None = Field(
        150.0, gt=0, allow_inf_nan=False,
        description="Load shedding: new sessions get 503 + Retry-After while the 95th percentile of the device "
        "queue waits of the last admission_window_s seconds is above this (ms); None = off.",
    )
    admission_max_queued_share: float | None = Field(
        0.3, gt=0, le=1, allow_inf_nan=False,
        description="Load shedding: new sessions get 503 + Retry-After while some device call waited for the bulk "
        "lane during more than this share of the last admission_window_s seconds (app.sessions.admission); "
        "None = off.",
    )
    admission_max_creating: int | None = Field(
        2, ge=1, description="Load shedding: new sessions get 503 + Retry-After while this many are being opened "
        "(upload read, volume not yet encoded; encodes run one at a time); None = off.",
    )
    admission_paced_admissions: int | None = Field(
        2, ge=1, description="Load shedding: while device calls were queued more than half of "
        "admission_max_queued_share of the window, at most this many new sessions per admission_window_s; "
        "None = off.",
    )
    admission_window_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="The window of recent device queue waits admission reads.")
    admission_min_samples: int = Field(
        20, ge=1, description="Device calls the window must hold before its latency rule refuses anything.")
    idle_trim_s: float | None = Field(
        120.0, gt=0, allow_inf_nan=False,
        description="A session unused this long drops its rebuildable caches (window / ROI embeddings, geodesic "
        "click reaches; its next decoder step re-encodes its ROI once); None = never.",
    )
    keep_alive_timeout_s: float = Field(
        75.0, gt=0, allow_inf_nan=False,
        description="Seconds an idle HTTP keep-alive connection stays open. Longer than any client's idle time "
        "between two requests: a server closing a connection just as the client reuses it is a 'connection "
        "reset by peer' the client cannot tell from a lost request (uvicorn's default is 5 s, annotators think "
        "for 2-5 s). Clients should drop idle connections sooner (httpx does after 5 s).",
    )
    max_upload_bytes: int = Field(1 << 30, ge=1, description="Largest request body accepted on uploads.")
    max_voxels: int = Field(1 << 28, ge=1, description="Largest volume (D*H*W) accepted.")
    max_volume_bytes: int = Field(
        1 << 30, ge=1, description="Largest voxel data an upload's header may declare, in bytes (what decoding "
        "it allocates), checked before anything is inflated.",
    )
    max_inflate_ratio: int = Field(
        200, ge=1, description="Compressed uploads (.nii.gz, compressed .mha/.nrrd, zip members) may declare at "
        "most this many times their stored bytes (past 8 MiB unpacked): a higher ratio is a decompression bomb.",
    )
    max_request_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest body of every request that is not a file upload (JSON prompts, "
        "forms): refused with 413 before it is parsed.",
    )
    resync_per_s: float = Field(
        2.0, gt=0, description="WebSocket resync requests answered per second per session (snapshots cost "
        "model-thread time every session shares); past it, a connection's resyncs are coalesced into one.",
    )
    resync_burst: int = Field(4, ge=1, description="Resync snapshots a session may get at once above the rate.")

    # Reverse proxy (docs/security.md).
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto "
        "are trusted to name the client; empty = none: the client is the TCP peer, whatever headers it sends. "
        "Environment: comma-separated.",
    )

    # Expiry clocks (seconds, monotonic).
    idle_timeout_s: float = Field(1800.0, gt=0, description="A session unused this long expires.")
    max_session_age_s: float = Field(8 * 3600.0, gt=0, description="Liveness: no session lives longer.")
    reaper_interval_s: float = Field(10.0, gt=0, description="How often the reaper looks for expired sessions.")
    tombstones: int = Field(10_000, ge=0, description="Expired/deleted session ids remembered for 410/404.")

    # Metadata store.
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "SEGSVC_REDIS_URL", "REDIS_URL"),
        description="redis://host:port/db; unset = the in-process store.",
    )
    redis_prefix: str = Field("segsvc:", description="Prefix of every Redis key this service writes.")

    # Durability (see docs/reliability.md).
    storage_dir: Path | None = Field(
        None,
        description="Directory where uploaded volumes and masks are written before their reply; with Redis, "
        "sessions are restored from it (and the prompt history) after a restart. None = no persistence.",
    )

    # Several replicas behind a router (docs/reliability.md, "Several replicas"; needs Redis + storage_dir).
    replica_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="This replica's name, unique among the replicas and stable across its restarts; set = take "
        "part in the session directory (lazy take-over of other replicas' sessions). None = one process.",
    )
    directory_ttl_s: float = Field(
        10.0, gt=0, description="A replica's heartbeat lives this long (renewed every third of it)."
    )
    trust_session_id_header: bool = Field(
        False, description="Accept the session id the router proposes in X-Session-Id on POST /v1/sessions "
        "(so that a session is created on the replica its id hashes to). Only behind a router that sets it.",
    )

    # WebSocket.
    stream_queue_frames: int = Field(
        1024, ge=1, description="Frames queued per WebSocket before the slow client is disconnected."
    )

    # DICOMweb and MONAI Label compatibility (docs/service.md, "DICOMweb" and "MONAI Label compatibility").
    dicomweb_url: str | None = Field(
        None, description="Root of a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS), e.g. "
        "http://orthanc:8042/dicom-web; images are read from it by SeriesInstanceUID and DICOM SEGs stored to it. "
        "None = no DICOMweb.",
    )
    monailabel_enabled: bool = Field(
        False, description="Serve the MONAI Label compatibility routes (/info/, /infer/{model}, /session/, "
        "/datastore/, /activelearning/, /train/) for OHIF's MONAI Label panel and 3D Slicer's MONAILabel module; "
        "off = they answer 404.",
    )
    monailabel_open: bool = Field(
        False, description="With API keys configured, let the MONAI Label routes through without X-API-Key "
        "(those viewers send none): only on a trusted network. Otherwise put the same-origin proxy in front.",
    )
    monailabel_labels: list[str] = Field(
        default_factory=lambda: ["object"], min_length=1,
        description="Label names the MONAI Label model offers (one object per label and image).",
    )
    monailabel_datastore: Path | None = Field(
        None, description="Directory of the MONAI Label datastore (images uploaded with PUT /datastore/, saved "
        "labels); None = <storage_dir>/monailabel.datastore when storage_dir is set, else no datastore (its "
        "routes answer 404).",
    )

    # nnInteractive's remote protocol (docs/nninteractive.md).
    nninteractive_enabled: bool = Field(
        False, description="Serve nnInteractive's remote protocol at /nninteractive (the torch-free "
        "nninteractive-client and the viewer plugins built on it); off = those paths answer 404.",
    )
    nninteractive_liveness_timeout_s: float = Field(
        60.0, gt=0, description="An nnInteractive lease whose client sent nothing (not even a heartbeat) this long "
        "is released with its session; its idle clock is idle_timeout_s.",
    )

    @field_validator("api_key_hashes", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_hashes(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: a JSON list or "h1,h2"
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _sha256_hex(cls, hashes: list[str]) -> list[str]:
        normalised = [h.strip().lower() for h in hashes]
        for i, h in enumerate(normalised):
            if not _SHA256_HEX.match(h):  # the value may be a key pasted by mistake: never echo it
                raise ValueError(f"api_key_hashes[{i}]: not a sha256 hex digest of 64 hex characters "
                                 "(python -m app hash-key prints one)")
        return normalised

    @property
    def volume_limits(self) -> VolumeLimits:
        """The ``app.io.volumes.VolumeLimits`` every upload route applies."""
        from app.io.volumes import VolumeLimits  # heavy (SimpleITK): only where files are read

        return VolumeLimits(max_bytes=self.max_upload_bytes, max_voxels=self.max_voxels,
                            max_zip_ratio=self.max_inflate_ratio, max_volume_bytes=self.max_volume_bytes,
                            max_inflate_ratio=self.max_inflate_ratio)

    @property
    def monailabel_datastore_dir(self) -> Path | None:
        """Where the MONAI Label datastore lives: ``monailabel_datastore``, else
        ``storage_dir/monailabel.datastore``."""
        if self.monailabel_datastore is not None:
            return self.monailabel_datastore
        # The dot keeps the name outside the session folder names, which the startup restore sweeps.
        return self.storage_dir / "monailabel.datastore" if self.storage_dir is not None else None

    @property
    def rate_limit_capacity(self) -> int:
        """Bucket size of the rate limiter: ``rate_limit_burst``, else the rate rounded up (at least 1)."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_per_s or 1.0))

    @model_validator(mode="after")
    def _explicit_random_weights(self) -> Settings:
        if self.weights is None and not self.allow_random_weights:
            raise ValueError("weights: None (random init) requires allow_random_weights=True")
        if self.max_session_age_s < self.idle_timeout_s:
            raise ValueError("max_session_age_s: must be >= idle_timeout_s")
        if self.replica_id is not None and (not self.redis_url or self.storage_dir is None):
            raise ValueError("replica_id: several replicas need the Redis store (redis_url) and a storage_dir "
                             "shared by every replica")
        return self
