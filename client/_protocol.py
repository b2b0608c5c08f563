"""Sans-IO halves of every SDK call: build the request, parse the reply (shared by sync and async clients).

Request bodies are checked with the field rules the server's request models run (``client.wire.rules``),
so bad input fails locally with the same message ("box: z1 < z0") as a ``ValidationError`` before anything
is sent. Replies are read into the frozen dataclasses of ``client.wire.replies``.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from client._errors import UnexpectedReplyError, ValidationError, error_from_reply
from client.wire import paths, rules
from client.wire.decode import from_json
from client.wire.errors import ErrorCode, field_from_message
from client.wire.paths import API_KEY_HEADER, IDEMPOTENCY_KEY_HEADER
from client.wire.replies import PromptReply, SessionCreated, SessionInfo
from client.wire.vocab import REFINE_MODES, REGION_MODES, MaskFormat, OverlapRule, RefineMode, RegionMode

VolumeInput = np.ndarray | str | os.PathLike[str]
_Reply = TypeVar("_Reply")


@dataclass(frozen=True)
class Request:
    """One HTTP request, independent of the client doing the IO."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"headers": self.headers}
        for name in ("json", "params", "files", "data"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def auth_headers(token: str) -> dict[str, str]:
    return {paths.AUTHORIZATION_HEADER: paths.BEARER_PREFIX + token}


def prompt_headers(token: str) -> dict[str, str]:
    """Headers of a mask-changing prompt: the token and a fresh idempotency key. The key makes the request
    safe to resend: the server applies it once and answers a resend with the reply it recorded."""
    return {**auth_headers(token), IDEMPOTENCY_KEY_HEADER: str(uuid.uuid4())}


DEFAULT_RETRIES = 3
"""Resends of a keyed prompt after a connection error, by default."""
RETRY_BASE_DELAY_S = 0.1
"""Backoff before resend n (0-based): RETRY_BASE_DELAY_S * 2**n."""
_RESENDABLE_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError)
"""Connect/read/write errors and a connection closed before the reply: the request may or may not have
been applied. Not timeouts (the server may still be working on it; a resend would wait behind it) and
never an HTTP error reply."""


def should_resend(request: Request, exc: httpx.RequestError, resends_done: int, retries: int) -> bool:
    """Whether to send ``request`` again after ``exc``: only requests carrying an idempotency key (the server
    applies those at most once), only on connection errors, at most ``retries`` times."""
    return (IDEMPOTENCY_KEY_HEADER in request.headers and isinstance(exc, _RESENDABLE_ERRORS)
            and resends_done < retries)


def resend_delay(resends_done: int) -> float:
    return RETRY_BASE_DELAY_S * 2.0 ** resends_done  # 2.0: int ** int is not typed float


def api_key_headers(api_key: str | None) -> dict[str, str]:
    """The server API key header (sent with every request and the stream), or nothing."""
    return {} if api_key is None else {API_KEY_HEADER: api_key}


def check(response: httpx.Response) -> httpx.Response:
    """Raise the typed ``SegError`` for a non-2xx reply."""
    if response.status_code >= 400:
        raise error_from_reply(response.status_code, response.content, response.headers)
    return response


def _checked(build: Any, *args: Any) -> dict[str, Any]:
    """The request body ``build(*args)`` returns, a rule's ``ValueError`` raised as a ``ValidationError``
    naming the field, as the server would answer it."""
    try:
        body: dict[str, Any] = build(*args)
    except ValueError as exc:
        message = str(exc)
        raise ValidationError(message, code=ErrorCode.VALIDATION_ERROR.value,
                              field=field_from_message(message)) from None
    return body


def _plain(value: Any) -> Any:
    """numpy arrays / scalars -> nested Python lists / numbers (the rules take JSON-like values)."""
    return np.asarray(value).tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _box_body(box_: Any, world: Any) -> dict[str, Any]:
    numbers = rules.numbers("box", box_, 6)
    voxel_or_mm = [float(v) for v in numbers] if rules.world_flag(world) else rules.voxel_box(numbers)
    return {"box": voxel_or_mm, "world": world}


def _clicks_body(points: Any, labels: Any, mode: Any, world: Any) -> dict[str, Any]:
    checked = rules.click_points(points)
    label_list = rules.click_labels(labels)
    mode = rules.choice("mode", mode, REFINE_MODES)
    rules.labels_per_point(len(checked), label_list)
    voxel_or_mm = [[float(c) for c in p] for p in checked] if rules.world_flag(world) else rules.click_voxels(checked)
    return {"points": voxel_or_mm, "labels": label_list, "mode": mode, "world": world}


def _scribble_body(voxels: Any, label: Any, mode: Any) -> dict[str, Any]:
    return {"voxels": rules.scribble_voxels(voxels), "label": rules.region_label(label),
            "mode": rules.choice("mode", mode, REGION_MODES)}


def _lasso_body(axis: Any, index: Any, contour: Any, label: Any, mode: Any) -> dict[str, Any]:
    return {"axis": rules.lasso_axis(axis), "index": rules.lasso_index(index),
            "contour": rules.lasso_contour(contour), "label": rules.region_label(label),
            "mode": rules.choice("mode", mode, REGION_MODES)}


def _text_body(name: Any, box_: Any, points: Any, labels: Any) -> dict[str, Any]:
    text, text_box, text_points = rules.text_name(name), rules.text_box(box_), rules.text_points(points)
    label_list = None if labels is None else rules.click_labels(labels)
    rules.text_labels(text_points, label_list)
    return {"text": text, "box": text_box, "points": text_points, "labels": label_list}


# --- sessions ----------------------------------------------------------------------------------------


def create_session(
    volume: VolumeInput, spacing: Sequence[float] | None, modality: str | None,
    exclusive_objects: bool | None = None,
) -> Request:
    """``POST /v1/sessions``. A numpy (D, H, W) array is sent as npz (``imgs`` + ``spacing`` in (z, y, x),
    with ``spacing_order=zyx``); a path is sent as the file itself (its extension picks the reader)."""
    data: dict[str, str] = {}
    if modality is not None:
        data[paths.UPLOAD_MODALITY_FIELD] = modality
    if exclusive_objects is not None:
        if not isinstance(exclusive_objects, bool):
            raise ValidationError(f"exclusive_objects: expected a bool or None, got {exclusive_objects!r}",
                                  field="exclusive_objects")
        data[paths.UPLOAD_EXCLUSIVE_OBJECTS_FIELD] = "true" if exclusive_objects else "false"
    if isinstance(volume, np.ndarray):
        if volume.ndim != 3:
            raise ValidationError(f"volume: expected a (D, H, W) array, got shape {volume.shape}", field="volume")
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(s > 0 for s in sp):
            raise ValidationError(f"spacing: expected 3 positive values (sz, sy, sx), got {spacing}",
                                  field="spacing")
        buf = io.BytesIO()
        np.savez_compressed(buf, imgs=np.ascontiguousarray(volume), spacing=np.asarray(sp, dtype=np.float64))
        files = {paths.UPLOAD_FILE_FIELD: ("volume.npz", buf.getvalue(), "application/x-npz")}
        data[paths.UPLOAD_SPACING_ORDER_FIELD] = "zyx"
    else:
        if spacing is not None:
            raise ValidationError("spacing: only for numpy volumes; a file carries its own spacing",
                                  field="spacing")
        file_path = Path(volume)
        try:
            content = file_path.read_bytes()
        except OSError as exc:
            raise ValidationError(f"volume: cannot read {str(file_path)!r}: {exc.strerror or exc}",
                                  field="volume") from None
        files = {paths.UPLOAD_FILE_FIELD: (file_path.name, content, "application/octet-stream")}
    return Request("POST", paths.SESSIONS, files=files, data=data)


def _reply(cls: type[_Reply], response: httpx.Response) -> _Reply:
    """The 2xx reply's JSON as the dataclass ``cls`` (typed errors for a non-2xx or an unreadable reply)."""
    content = check(response).content
    try:
        return from_json(cls, json.loads(content))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise UnexpectedReplyError(f"reply: not a {cls.__name__} ({exc}): {content[:80]!r}",
                                   status=response.status_code) from None


def parse_created(response: httpx.Response) -> SessionCreated:
    return _reply(SessionCreated, response)


def session_info(sid: str, token: str) -> Request:
    return Request("GET", paths.SESSION.format(session_id=sid), headers=auth_headers(token))


def parse_info(response: httpx.Response) -> SessionInfo:
    return _reply(SessionInfo, response)


def close_session(sid: str, token: str) -> Request:
    return Request("DELETE", paths.SESSION.format(session_id=sid), headers=auth_headers(token))


# --- objects -----------------------------------------------------------------------------------------


def _object_path(template: str, sid: str, oid: int) -> str:
    if isinstance(oid, bool) or not isinstance(oid, (int, np.integer)):
        raise ValidationError(f"object_id: expected an int, got {oid!r}", field="object_id")
    if not paths.MIN_OBJECT_ID <= int(oid) <= paths.MAX_OBJECT_ID:
        raise ValidationError(f"object_id: must be in {paths.MIN_OBJECT_ID}..{paths.MAX_OBJECT_ID}, got {oid}",
                              field="object_id")
    return template.format(session_id=sid, object_id=int(oid))


def box(sid: str, token: str, oid: int, box_: Sequence[float] | np.ndarray, world: bool) -> Request:
    body = _checked(_box_body, _plain(box_), world)
    return Request("POST", _object_path(paths.OBJECT_BOX, sid, oid), json=body,
                   headers=prompt_headers(token))


def clicks(
    sid: str, token: str, oid: int, points: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[int] | np.ndarray,
    mode: RefineMode, world: bool,
) -> Request:
    body = _checked(_clicks_body, _plain(points), _plain(labels), mode, world)
    return Request("POST", _object_path(paths.OBJECT_CLICKS, sid, oid), json=body,
                   headers=prompt_headers(token))


def scribble(sid: str, token: str, oid: int, voxels: Sequence[Sequence[int]] | np.ndarray, label: int,
             mode: RegionMode) -> Request:
    body = _checked(_scribble_body, _plain(voxels), _plain(label), mode)
    return Request("POST", _object_path(paths.OBJECT_SCRIBBLE, sid, oid), json=body,
                   headers=prompt_headers(token))


def lasso(sid: str, token: str, oid: int, axis: int, index: int, contour: Sequence[Sequence[float]] | np.ndarray,
          label: int, mode: RegionMode) -> Request:
    body = _checked(_lasso_body, _plain(axis), _plain(index), _plain(contour), _plain(label), mode)
    return Request("POST", _object_path(paths.OBJECT_LASSO, sid, oid), json=body,
                   headers=prompt_headers(token))


def text(sid: str, token: str, oid: int, name: str, box_: Sequence[int] | np.ndarray | None,
         points: Sequence[Sequence[int]] | np.ndarray | None, labels: Sequence[int] | np.ndarray | None) -> Request:
    body = _checked(_text_body, name, _plain(box_), _plain(points), _plain(labels))
    return Request("POST", _object_path(paths.OBJECT_TEXT, sid, oid), json=body,
                   headers=prompt_headers(token))


def undo(sid: str, token: str, oid: int) -> Request:
    return Request("POST", _object_path(paths.OBJECT_UNDO, sid, oid), headers=prompt_headers(token))


def reset(sid: str, token: str, oid: int) -> Request:
    return Request("POST", _object_path(paths.OBJECT_RESET, sid, oid), headers=prompt_headers(token))


def remove(sid: str, token: str, oid: int) -> Request:
    # Keyed like a prompt: a resent removal is answered from the record, never 404 for the object it removed.
    return Request("DELETE", _object_path(paths.OBJECT, sid, oid), headers=prompt_headers(token))


def set_mask(sid: str, token: str, oid: int, mask: np.ndarray) -> Request:
    """``PUT .../mask`` with an npz holding ``mask`` (uint8 0/1, (D, H, W))."""
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValidationError(f"mask: expected a (D, H, W) array, got shape {arr.shape}", field="mask")
    if arr.dtype != bool and not bool(np.isin(arr, (0, 1)).all()):
        raise ValidationError("mask: values must be 0 or 1", field="mask")
    buf = io.BytesIO()
    arrays: dict[str, Any] = {paths.MASK_NPZ_KEY: arr.astype(np.uint8)}
    np.savez_compressed(buf, **arrays)
    files = {paths.UPLOAD_FILE_FIELD: ("mask.npz", buf.getvalue(), "application/x-npz")}
    return Request("PUT", _object_path(paths.OBJECT_MASK, sid, oid), files=files, headers=prompt_headers(token))


def parse_prompt(response: httpx.Response) -> PromptReply:
    return _reply(PromptReply, response)


def _format(fmt: MaskFormat | str) -> str:
    try:
        return MaskFormat(fmt).value
    except ValueError:
        raise ValidationError(f"format: expected one of {[f.value for f in MaskFormat]}, got {fmt!r}",
                              field="format") from None


def get_mask(sid: str, token: str, oid: int, fmt: MaskFormat | str) -> Request:
    fmt_value = _format(fmt)
    return Request("GET", _object_path(paths.OBJECT_MASK, sid, oid), params={paths.FORMAT_QUERY: fmt_value},
                   headers=auth_headers(token))


def get_segmentation(sid: str, token: str, fmt: MaskFormat | str, overlap: OverlapRule | str = "confidence"
                     ) -> Request:
    try:
        rule = OverlapRule(overlap).value
    except ValueError:
        raise ValidationError(f"overlap: expected one of {[r.value for r in OverlapRule]}, got {overlap!r}",
                              field="overlap") from None
    params = {paths.FORMAT_QUERY: _format(fmt), paths.OVERLAP_QUERY: rule}
    return Request("GET", paths.SEGMENTATION.format(session_id=sid), params=params, headers=auth_headers(token))


def parse_npz(response: httpx.Response, key: str) -> np.ndarray:
    """The array ``key`` of an npz reply (no pickles)."""
    content = check(response).content
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            return np.asarray(npz[key])
    except (ValueError, OSError, KeyError) as exc:
        raise UnexpectedReplyError(f"reply: not an npz with key {key!r} ({exc})",
                                   status=response.status_code) from None
