"""The prompt vocabulary shared by the wire schemas, the session services and the models (no dependencies).

Each name is defined here once; ``app.schemas`` types its request fields with these literals, ``app.sessions``
checks what arrives by other paths (the nnInteractive routes, replays) against the tuples, and ``app.models``
refuses anything else from direct callers.
"""

from __future__ import annotations

from typing import Literal

RefineMode = Literal["gru", "decoder", "both"]
REFINE_MODES: tuple[str, ...] = ("gru", "decoder", "both")
"""Steps a click prompt runs: "gru" the corrector only, "decoder" the mask decoder only, "both" gru then decoder."""

RegionMode = Literal["decoder", "both"]
REGION_MODES: tuple[str, ...] = ("decoder", "both")
"""Modes of a scribble or lasso: its constraint rides on the decoder step, which therefore always runs."""

StepName = Literal["box", "gru", "decoder", "mask", "undo", "reset", "remove"]
"""What produced a new version of an object: a model step, a mask upload, an undo, a reset or a removal."""

AXES = ("z", "y", "x")
"""Names of the volume array's axes, in array order (SimpleITK ``GetArrayFromImage``)."""
