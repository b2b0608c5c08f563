"""Scribble and lasso through the SDK against a real server: the WebSocket stream carries their steps, the
mask rebuilt from it equals the downloaded one, and a bad region fails locally, by name, before any request."""

from __future__ import annotations

import numpy as np
import pytest

from client import Client
from client._errors import ValidationError
from tests.e2e.conftest import SHAPE, Server, synthetic_volume

pytestmark = pytest.mark.e2e


def test_scribble_and_lasso_stream_and_undo(server: Server) -> None:
    with Client(server.url) as c:
        s = c.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        with s.stream() as stream:
            s.box(1, [6, 20, 20, 16, 44, 44])
            z = SHAPE[0] // 2
            voxels = np.array([[z, 32, x] for x in range(24, 40)])
            reply = s.scribble(1, voxels, label=1)
            assert [step.step for step in reply.steps] == ["gru", "decoder"]
            assert s.mask(1)[voxels[:, 0], voxels[:, 1], voxels[:, 2]].all()
            before = s.mask(1)
            reply = s.lasso(1, 0, z, [[22, 22], [22, 30], [30, 30], [30, 22]], label=0, mode="decoder")
            mask = s.mask(1)
            assert not mask[z, 22:31, 22:31].any()
            assert np.array_equal(stream.wait_for_version(1, reply.version), mask)
            undone = s.undo(1)
            assert np.array_equal(stream.wait_for_version(1, undone.version), before)
        with pytest.raises(ValidationError) as info:
            s.lasso(1, 0, z, [[0, 0], [1, 1]])
        assert info.value.field == "contour"
        s.close()
