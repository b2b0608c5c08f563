"""Diff frames made by the server's encoder (``app.schemas.frames``), the test vectors of the viewer's decoder.

``viewer/test/fixtures/`` holds them as committed files (``<name>.bin`` + ``<name>.json`` with the decoded
fields and the changed voxels), so ``npm test`` runs without Python; ``test_viewer_js.py`` checks that the
committed files still equal what the encoder makes now. Regenerate after a wire-format change with
``python -m tests.viewer.frame_fixtures``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.schemas.frames import decode_diff, encode_diff, encode_snapshot

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "viewer" / "test" / "fixtures"


def _blob(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    d2 = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2
    return (d2 <= radius**2).astype(np.uint8)


def _diff(before: np.ndarray, after: np.ndarray, **kwargs: object) -> bytes:
    idx = np.flatnonzero(before.reshape(-1) != after.reshape(-1))
    return encode_diff(idx, after.reshape(-1)[idx], shape=after.shape, **kwargs)  # type: ignore[arg-type]


def make_fixtures() -> dict[str, bytes]:
    """name -> frame bytes. The ``seq_*`` frames are one object's versions 1..3, in order."""
    shape = (6, 17, 19)  # odd sizes: a wrong row length or axis order breaks the flat indices
    v1 = _blob(shape, (2.5, 8.0, 9.0), 3.2)
    v2 = v1.copy()
    v2[1:4, 5:9, 12:16] = 1  # a foreground click adds a bump
    v3 = v2.copy()
    v3[2:4, 7:10, 6:9] = 0  # a background click removes a bite
    return {
        # docs/wire-format.md's example: (2, 3, 4), voxel [0, 1, 3] (flat 7) -> 1 by an undo, v8 -> v9
        "doc_example": encode_diff([7], [1], object_id=1, version=9, base_version=8, shape=(2, 3, 4), step="undo"),
        "empty_diff": encode_diff([], [], object_id=3, version=4, base_version=3, shape=shape, step="gru"),
        "snapshot_zlib": encode_snapshot(v3, object_id=2, version=7, compress=True),
        "snapshot_plain": encode_snapshot(v3, object_id=2, version=7, compress=False),
        "seq_1_box": _diff(np.zeros(shape, np.uint8), v1, object_id=5, version=1, base_version=0, step="box"),
        "seq_2_gru": _diff(v1, v2, object_id=5, version=2, base_version=1, step="gru", compress=True),
        "seq_3_decoder": _diff(v2, v3, object_id=5, version=3, base_version=2, step="decoder", compress=False),
    }


def expected_fields(data: bytes) -> dict[str, object]:
    """What the viewer's decoder must report for ``data`` (from the server's own decoder)."""
    f = decode_diff(data)
    return {
        "kind": f.kind, "object_id": f.object_id, "version": f.version, "base_version": f.base_version,
        "step": f.step, "shape": list(f.shape), "count": f.count, "bbox": list(f.bbox) if f.bbox else None,
        "compressed": f.compressed, "n_runs": f.n_runs,
        "indices": [int(i) for i in f.indices], "values": [int(v) for v in f.values],
    }


def fixture_files() -> dict[str, bytes]:
    """File name -> content of every file of ``viewer/test/fixtures``."""
    files: dict[str, bytes] = {}
    for name, data in make_fixtures().items():
        files[f"{name}.bin"] = data
        files[f"{name}.json"] = (json.dumps(expected_fields(data), separators=(",", ":")) + "\n").encode()
    return files


if __name__ == "__main__":
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, content in fixture_files().items():
        (FIXTURE_DIR / file_name).write_bytes(content)
    print(f"wrote {len(fixture_files())} files to {FIXTURE_DIR}")
