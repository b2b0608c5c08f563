"""One round trip of the SDK installed alone (run by the SDK-only venv of .ci/sdk_install_check.sh).

    python sdk_round_trip.py BASE_URL VOLUME_PATH '{"shape": [D, H, W], "box": [...6], "click": [z, y, x]}'

Upload, box, click (streamed and waited for), mask download (npz and NIfTI bytes), session info, close; then
the closed session must answer as gone. Exits non-zero with the step's name on any failure.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import client
from client import Client, PromptReply, SessionExpiredError, SessionInfo


def main(base_url: str, volume: str, sample: dict[str, list[int]]) -> str:
    leaked = sorted({"torch", "pydantic", "fastapi", "app"} & {m.split(".")[0] for m in sys.modules})
    assert not leaked, f"import client loaded {leaked}"
    shape, box, click = tuple(sample["shape"]), sample["box"], sample["click"]
    with Client(base_url) as api:
        session = api.create_session(volume)
        assert session.created is not None and session.created.shape == shape, session.created
        with session.stream() as stream:
            boxed = session.box(1, box)
            clicked = session.clicks(1, [click], [1], mode="gru")
            assert isinstance(clicked, PromptReply) and clicked.version > boxed.version, (boxed, clicked)
            streamed = stream.wait_for_version(1, clicked.version, timeout=60)
        mask = session.mask(1)
        assert mask.shape == shape and mask[tuple(click)] == 1, "the clicked voxel is not in the mask"
        assert np.array_equal(streamed, mask), "the stream's mask differs from the downloaded one"
        nifti = session.download_mask(1)
        assert nifti[:2] == b"\x1f\x8b", "the NIfTI download is not gzip"
        info = session.info()
        assert isinstance(info, SessionInfo) and [o.object_id for o in info.objects] == [1], info
        session.close()
        try:
            session.info()
        except SessionExpiredError:
            pass
        else:
            raise AssertionError("a closed session still answered")
    return f"sdk round trip ok: client from {client.__file__}, {int(mask.sum())} foreground voxels"


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
