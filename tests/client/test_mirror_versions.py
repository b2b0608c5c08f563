"""The SDK mirror after a reconnect to a server whose history differs from what the mirror holds.

A server restored from its history (after a crash, a store outage or a replica hand-over) may be *behind* a
mirror that saw a frame of a prompt the store never recorded. The mirror must resync then: otherwise it keeps
the wrong voxels and takes the server's next real frame (same version number) for a duplicate.
"""

from __future__ import annotations

import json

import numpy as np

from client import MaskMirror
from client.wire.frames import encode_diff, encode_snapshot

SHAPE = (4, 5, 6)
OID = 1


def _hello(objects: dict[int, int]) -> str:
    return json.dumps({"type": "hello", "session_id": "s", "shape": list(SHAPE), "frame_version": 1,
                       "objects": {str(k): v for k, v in objects.items()}})


def _diff(before: np.ndarray, after: np.ndarray, version: int) -> bytes:
    idx = np.flatnonzero(before.ravel() != after.ravel())
    return encode_diff(idx, after.ravel()[idx], object_id=OID, version=version, base_version=version - 1,
                       shape=SHAPE, step="gru")


def _masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v1 = np.zeros(SHAPE, np.uint8)
    v1[1:3, 1:4, 1:5] = 1
    unrecorded = v1.copy()  # what a frame streamed before a failed commit showed
    unrecorded[0, 0, :] = 1
    recorded = v1.copy()  # what the restored server computes next, under the same version number
    recorded[3, 4, :] = 1
    return v1, unrecorded, recorded


def test_hello_behind_the_mirror_resyncs_and_the_next_frame_lands() -> None:
    v1, unrecorded, recorded = _masks()
    mirror = MaskMirror()
    mirror.on_text(_hello({}))
    mirror.on_binary(_diff(np.zeros(SHAPE, np.uint8), v1, 1))
    mirror.on_binary(_diff(v1, unrecorded, 2))
    assert mirror.versions[OID] == 2

    # Reconnected to the restored server, which recorded version 1 only.
    assert mirror.on_text(_hello({OID: 1})) == [MaskMirror.resync_message(None)]
    mirror.on_binary(encode_snapshot(v1, object_id=OID, version=1))
    assert mirror.versions[OID] == 1 and np.array_equal(mirror.masks[OID], v1)
    assert mirror.on_binary(_diff(v1, recorded, 2)) == []
    assert mirror.versions[OID] == 2
    np.testing.assert_array_equal(mirror.masks[OID], recorded)


def test_hello_equal_asks_nothing_and_an_unlisted_object_is_dropped() -> None:
    v1, _, _ = _masks()
    mirror = MaskMirror()
    mirror.on_text(_hello({}))
    mirror.on_binary(_diff(np.zeros(SHAPE, np.uint8), v1, 1))
    assert mirror.on_text(_hello({OID: 1})) == []
    assert mirror.on_text(_hello({})) == []
    assert OID not in mirror.masks and OID not in mirror.versions


def test_hello_ahead_of_the_mirror_still_resyncs() -> None:
    mirror = MaskMirror()
    assert mirror.on_text(_hello({OID: 3})) == [MaskMirror.resync_message(None)]
    assert mirror.pending_resync == {OID}
