"""A tiny in-memory stand-in for the v1 API behind ``httpx.MockTransport`` (SDK tests need no network)."""

from __future__ import annotations

import email.parser
import io
import json
from dataclasses import dataclass, field

import httpx
import numpy as np

from app.schemas.errors import ErrorCode, error_body


@dataclass
class FakeApi:
    """Records requests; answers session, prompt and mask routes from in-memory numpy masks."""

    token: str = "secret-token"
    requests: list[httpx.Request] = field(default_factory=list)
    uploads: list[dict[str, bytes]] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)
    forced: tuple[int, dict, dict[str, str]] | None = None  # (status, body, headers) for every request

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.forced is not None:
            status, body, headers = self.forced
            return httpx.Response(status, json=body, headers=headers)
        parts = request.url.path.strip("/").split("/")
        if request.url.path == "/v1/sessions" and request.method == "POST":
            return self._create(request)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json=error_body(ErrorCode.UNAUTHORIZED, "token: wrong token"))
        if len(parts) == 3:
            return httpx.Response(204)
        if parts[3] == "segmentation":
            seg = np.zeros(self.shape, np.uint16)
            for oid, mask in sorted(self.masks.items()):
                seg[mask > 0] = oid
            return self._npz(segs=seg)
        oid, action = int(parts[4]), parts[5]
        if action == "mask" and request.method == "GET":
            return self._npz(mask=self.masks[oid])
        if action == "mask" and request.method == "PUT":
            with np.load(io.BytesIO(multipart(request)["file"])) as npz:
                self.masks[oid] = npz["mask"]
        version = self.versions.get(oid, 0) + 1
        self.versions[oid] = version
        reply = {"object_id": oid, "version": version, "changed": 3, "bbox": [0, 0, 0, 1, 1, 1],
                 "steps": [{"step": "gru", "version": version, "changed": 3, "bbox": [0, 0, 0, 1, 1, 1]}],
                 "timings_ms": {"total": 1.5}}
        return httpx.Response(200, json=reply)

    def _create(self, request: httpx.Request) -> httpx.Response:
        form = multipart(request)
        self.uploads.append(form)
        with np.load(io.BytesIO(form["file"])) as npz:
            imgs, spacing = npz["imgs"], npz["spacing"]
        self.shape = imgs.shape
        body = {"session_id": "s1", "token": self.token, "shape": list(imgs.shape), "spacing": spacing.tolist(),
                "config": "segvol-test", "expires_in_s": 600.0, "modality": form.get("modality", b"").decode()
                or None}
        return httpx.Response(201, json=body)

    @staticmethod
    def _npz(**arrays: np.ndarray) -> httpx.Response:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return httpx.Response(200, content=buf.getvalue(), headers={"Content-Type": "application/x-npz"})

    def last_json(self) -> dict:
        return json.loads(self.requests[-1].content)


def multipart(request: httpx.Request) -> dict[str, bytes]:
    """Form fields of a multipart request, by name."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + request.read())
    out: dict[str, bytes] = {}
    for part in message.get_payload():  # type: ignore[union-attr]
        name = part.get_param("name", header="content-disposition")
        out[str(name)] = part.get_payload(decode=True)
    return out
