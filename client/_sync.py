"""Synchronous SDK: ``Client`` (one per server) and ``Session`` (one uploaded volume)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

import httpx
import numpy as np

from client import _protocol as proto
from client._errors import TransportError
from client._protocol import Request, VolumeInput
from client._stream import MaskStream
from client.wire import paths
from client.wire.replies import PromptReply, SessionCreated, SessionInfo
from client.wire.vocab import MaskFormat, OverlapRule, RefineMode, RegionMode

DEFAULT_TIMEOUT = 120.0
"""Seconds; uploads encode the volume on the server, which can take a while on CPU."""


class Client:
    """A connection pool to one server.

    Args:
        base_url: e.g. "http://127.0.0.1:8000".
        transport: an ``httpx.BaseTransport`` (e.g. ``httpx.MockTransport`` in tests); default: the network.
        timeout: seconds per request.
        headers: extra headers sent with every request.
        api_key: the server API key, sent as ``X-API-Key`` with every request and the stream (servers
            configured with ``api_key_hashes`` refuse requests without it).
        retries: how often a mask-changing prompt (box, clicks, scribble, lasso, text, undo, reset, set_mask)
            is resent after a connection error or a connection closed before the reply, with a backoff of
            0.1 s, 0.2 s, 0.4 s, ... Each prompt carries a fresh ``Idempotency-Key`` (uuid4) and a resend
            carries the same one, so the server applies the prompt exactly once and answers a resend of an
            applied prompt with the reply it recorded, also after a server restart. HTTP error replies and
            timeouts are never resent; other requests are never resent. 0 turns resending off.
    """

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = DEFAULT_TIMEOUT, headers: dict[str, str] | None = None,
                 api_key: str | None = None, retries: int = proto.DEFAULT_RETRIES) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.api_key = api_key
        headers = {**(headers or {}), **proto.api_key_headers(api_key)}
        self._http = httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout,
                                  headers=headers)

    def _send(self, request: Request) -> httpx.Response:
        resends = 0
        while True:
            try:
                return self._http.request(request.method, request.path, **request.kwargs())
            except httpx.RequestError as exc:  # transport failures, and a reply httpx cannot decode or follow
                if not proto.should_resend(request, exc, resends, self.retries):
                    raise TransportError(f"{request.method} {request.path}: {exc!r}") from exc
            time.sleep(proto.resend_delay(resends))  # the same request, the same idempotency key
            resends += 1

    def create_session(self, volume: VolumeInput, *, spacing: Sequence[float] | None = None,
                       modality: str | None = None, exclusive_objects: bool | None = None) -> Session:
        """Upload a volume and open a session on it.

        Args:
            volume: a (D, H, W) numpy array in (z, y, x) order, or a path to a NIfTI / NRRD / MHA / npz /
                zip (MHD+RAW or DICOM series) file.
            spacing: (sz, sy, sx) mm, numpy volumes only (default 1 mm).
            modality: "CT", "MR", ... (optional).
            exclusive_objects: the objects are one label map's labels, so one object's foreground click is a
                background click to the others (None = the server's setting; ``SessionInfo.exclusive_objects``
                says which a session is).
        """
        request = proto.create_session(volume, spacing, modality, exclusive_objects)
        created = proto.parse_created(self._send(request))
        return Session(self, created.session_id, created.token, created=created)

    def session(self, session_id: str, token: str) -> Session:
        """Attach to an existing session (e.g. from another process)."""
        return Session(self, session_id, token)

    def health(self) -> bool:
        """True when ``/healthz`` answers 2xx."""
        try:
            return self._http.get(paths.HEALTHZ).is_success
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Session:
    """One server-side session. Coordinates are (z, y, x) voxel indices; boxes are inclusive
    [z0, y0, x0, z1, y1, x1]. Every prompt returns a ``PromptReply`` (new version, changed count, bbox)."""

    def __init__(self, client: Client, session_id: str, token: str,
                 created: SessionCreated | None = None) -> None:
        self.client = client
        self.session_id = session_id
        self.token = token
        self.created = created

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(D, H, W) when this handle created the session (else see ``info()``)."""
        return None if self.created is None else self.created.shape

    def _send(self, request: Request) -> httpx.Response:
        return self.client._send(request)

    def info(self) -> SessionInfo:
        return proto.parse_info(self._send(proto.session_info(self.session_id, self.token)))

    def box(self, object_id: int, box: Sequence[float] | np.ndarray, *, world: bool = False) -> PromptReply:
        """Start (or restart) ``object_id`` from an inclusive box [z0, y0, x0, z1, y1, x1]."""
        return proto.parse_prompt(self._send(proto.box(self.session_id, self.token, object_id, box, world)))

    def clicks(self, object_id: int, points: Sequence[Sequence[float]] | np.ndarray,
               labels: Sequence[int] | np.ndarray, *, mode: RefineMode = "both", world: bool = False
               ) -> PromptReply:
        """Add clicks: ``points`` (N, 3) as (z, y, x), ``labels`` (N,) 1 = foreground, 0 = background."""
        request = proto.clicks(self.session_id, self.token, object_id, points, labels, mode, world)
        return proto.parse_prompt(self._send(request))

    def scribble(self, object_id: int, voxels: Sequence[Sequence[int]] | np.ndarray, *, label: int = 1,
                 mode: RegionMode = "both") -> PromptReply:
        """A scribble: the painted ``voxels`` (N, 3) as (z, y, x), all ending with ``label`` (1 = foreground)."""
        request = proto.scribble(self.session_id, self.token, object_id, voxels, label, mode)
        return proto.parse_prompt(self._send(request))

    def lasso(self, object_id: int, axis: int, index: int, contour: Sequence[Sequence[float]] | np.ndarray, *,
              label: int = 1, mode: RegionMode = "both") -> PromptReply:
        """A lasso: the closed ``contour`` (N, 2) on slice ``index`` along ``axis``, in the slice's other two axes
        in volume order (axis 0: (y, x)), filled; the region ends with ``label``."""
        request = proto.lasso(self.session_id, self.token, object_id, axis, index, contour, label, mode)
        return proto.parse_prompt(self._send(request))

    def text(self, object_id: int, name: str, *, box: Sequence[int] | np.ndarray | None = None,
             points: Sequence[Sequence[int]] | np.ndarray | None = None,
             labels: Sequence[int] | np.ndarray | None = None) -> PromptReply:
        """Start (or restart) ``object_id`` by its name ("liver"), SegVol's text prompt, optionally with a voxel
        box and clicks. Only for models whose ``prompt_kinds`` list "text" (others answer 422)."""
        request = proto.text(self.session_id, self.token, object_id, name, box, points, labels)
        return proto.parse_prompt(self._send(request))

    def undo(self, object_id: int) -> PromptReply:
        return proto.parse_prompt(self._send(proto.undo(self.session_id, self.token, object_id)))

    def reset(self, object_id: int) -> PromptReply:
        return proto.parse_prompt(self._send(proto.reset(self.session_id, self.token, object_id)))

    def remove(self, object_id: int) -> None:
        """Delete the object (its mask, prompts and history)."""
        proto.check(self._send(proto.remove(self.session_id, self.token, object_id)))

    def set_mask(self, object_id: int, mask: np.ndarray) -> PromptReply:
        """Replace the object's mask with ``mask`` ((D, H, W), 0/1 or bool), e.g. to refine an existing one."""
        return proto.parse_prompt(self._send(proto.set_mask(self.session_id, self.token, object_id, mask)))

    def mask(self, object_id: int) -> np.ndarray:
        """The object's current mask, uint8 (D, H, W) of 0/1."""
        response = self._send(proto.get_mask(self.session_id, self.token, object_id, MaskFormat.NPZ))
        return proto.parse_npz(response, paths.MASK_NPZ_KEY)

    def download_mask(self, object_id: int, fmt: MaskFormat | str = MaskFormat.NIFTI_GZ) -> bytes:
        """The object's mask as a file ("npz", "nii.gz" or "nrrd") in the uploaded volume's geometry, or
        "dcm": a DICOM SEG referencing the source series (sessions created from a DICOM series)."""
        response = self._send(proto.get_mask(self.session_id, self.token, object_id, fmt))
        return proto.check(response).content

    def segmentation(self, overlap: OverlapRule | str = OverlapRule.CONFIDENCE) -> np.ndarray:
        """All objects as one (D, H, W) label map (value = object id, 0 = background).

        ``overlap``: "confidence" (a voxel claimed by several objects goes to the one with the highest logit)
        or "recent" (to the most recently changed object)."""
        response = self._send(proto.get_segmentation(self.session_id, self.token, MaskFormat.NPZ, overlap))
        return proto.parse_npz(response, paths.SEGMENTATION_NPZ_KEY)

    def download_segmentation(self, fmt: MaskFormat | str = MaskFormat.NIFTI_GZ,
                              overlap: OverlapRule | str = OverlapRule.CONFIDENCE) -> bytes:
        response = self._send(proto.get_segmentation(self.session_id, self.token, fmt, overlap))
        return proto.check(response).content

    def stream(self, *, open_timeout: float = 10.0) -> MaskStream:
        """Open the diff stream: a consumer keeping a local mask per object (use ``with``)."""
        return MaskStream(self.client.base_url, self.session_id, self.token, open_timeout=open_timeout,
                          api_key=self.client.api_key)

    def close(self) -> None:
        """Delete the session on the server (frees its device memory)."""
        proto.check(self._send(proto.close_session(self.session_id, self.token)))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
