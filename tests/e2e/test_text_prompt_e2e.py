"""A text prompt round trip through a real server process and the SDK: ``python -m app --config segvol-test
--random-weights --zoom-in segvol --text-prompts`` (SegVol's inference with the CLIP text branch)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from client import Client, ValidationError
from tests.e2e.conftest import Server
from tests.volumes import synthetic_volume

pytest.importorskip("transformers")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_name_through_the_sdk(server_factory: Callable[..., Server]) -> None:
    from app.models.clip_tokenizer import packaged_vocabulary

    try:
        packaged_vocabulary()
    except FileNotFoundError:
        pytest.skip("CLIP's vocabulary (open-clip-torch, the 'text' extra) is not installed")
    server = server_factory("--zoom-in", "segvol", "--text-prompts")
    with Client(server.url) as client:
        session = client.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0), modality="CT")
        reply = session.text(1, "liver", box=[6, 20, 20, 17, 43, 43])
        assert reply.version == 1 and reply.steps[0].step == "decoder"
        reply = session.text(2, "left kidney")
        assert reply.version == 1
        mask = session.mask(1)
        assert mask.shape == (24, 64, 64) and set(np.unique(mask)) <= {0, 1}
        with pytest.raises(ValidationError):
            session.text(1, "   ")  # refused locally, the field named


def test_the_default_model_answers_422(server: Server) -> None:
    with Client(server.url) as client:
        session = client.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        with pytest.raises(ValidationError) as info:
            session.text(1, "liver")
        assert "text" in str(info.value)
