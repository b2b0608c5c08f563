"""Typed per-session and per-object state (SAM 2's explicit inference state, as dataclasses).

The model weights are shared and stateless; everything a session owns lives here and stays on the
session's device: the normalised volume, the cached image embeddings, and per object the logits over its
region of interest, the corrector's hidden state, the prompt history and the undo stack.

Conventions (see ``app.coordinates``): volume arrays are (D, H, W) = (z, y, x) in SimpleITK's
``GetArrayFromImage`` order; a ``Bounds`` is a half-open box (z0, y0, x0, z1, y1, x1) in volume voxels;
a user box is *inclusive* [z0, y0, x0, z1, y1, x1].
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.coordinates import Bounds
from app.models.backbone import Embedding
from app.models.uncertain_band import UncertainBand


@dataclass(frozen=True)
class Change:
    """Exactly what one step changed in one object's binary mask.

    Attributes:
        object_id: the object.
        version: the object's version after this step (strictly increasing per object).
        step: which step produced it ("box", "gru", "decoder", "mask", "undo", "reset").
        indices: (n,) int64 flat C-order indices into the (D, H, W) volume, ascending.
        values: (n,) uint8 new mask values (0 or 1) at ``indices``.
        bbox: inclusive (z0, y0, x0, z1, y1, x1) of the changed voxels, None when nothing changed.
        timings_ms: named stage timings of this step.
    """

    object_id: int
    version: int
    step: str
    indices: np.ndarray
    values: np.ndarray
    bbox: tuple[int, int, int, int, int, int] | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.indices.shape[0])


@dataclass
class Click:
    """One user click in volume voxel indices; label 1 = foreground, 0 = background."""

    z: int
    y: int
    x: int
    label: int


@dataclass
class UndoEntry:
    """Everything needed to put an object back exactly as it was before one prompt.

    The previous logits are kept either whole (``logits``: the old tensor itself, never mutated after being
    stored) or, for sparse GRU steps on an unchanged ROI, as the few overwritten values (``sparse_index`` flat
    indices into the ROI, ``sparse_values`` their old logits).
    """

    step: str
    box: tuple[int, int, int, int, int, int] | None
    clicks: list[Click]
    first_click: tuple[int, int, int] | None
    roi: Bounds | None
    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    rounds: int
    sparse_index: torch.Tensor | None = None
    sparse_values: torch.Tensor | None = None
    text: str | None = None

    @property
    def nbytes(self) -> int:
        n = 0
        for t in (self.logits, self.hidden, self.sparse_index, self.sparse_values):
            if t is not None:
                n += t.element_size() * t.nelement()
        return n


@dataclass
class ObjectState:
    """One structure being segmented inside a session.

    ``logits`` covers ``roi`` only (shape = roi extent); everywhere else the object is background.
    """

    object_id: int
    version: int = 0
    box: tuple[int, int, int, int, int, int] | None = None
    text: str | None = None  # the object's name as a text prompt (SegVol's text branch)
    clicks: list[Click] = field(default_factory=list)
    first_click: tuple[int, int, int] | None = None
    roi: Bounds | None = None
    # (rd, rh, rw) float32 on the session device. A GRU step may update it in place (see ``own_logits``): a
    # caller that keeps a state of it copies it.
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # corrector hidden state, (layers, 1, hidden)
    rounds: int = 0  # corrector rounds run so far (seeds the error sampling)
    undo_stack: list[UndoEntry] = field(default_factory=list)
    # The uncertainty band of ``logits`` as the last GRU step left it: a cache, not part of the undo state.
    band: UncertainBand | None = field(default=None, repr=False, compare=False)
    # The logits tensor the last GRU, box, decoder or mask step made: while no undo entry holds it, the next GRU
    # step on the same ROI writes its few voxels into it in place instead of copying the ROI (``gru_step``).
    own_logits: weakref.ref[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        n = sum(e.nbytes for e in self.undo_stack) + (self.band.nbytes if self.band is not None else 0)
        for t in (self.logits, self.hidden):
            if t is not None:
                n += t.element_size() * t.nelement()
        return n


@dataclass
class SessionState:
    """One uploaded volume, its cached embeddings and its objects.

    Attributes:
        shape: (D, H, W) of the volume as uploaded.
        spacing: (sz, sy, sx) in mm.
        device: where every tensor of this session lives.
        crop: half-open foreground crop of the volume the model works on (SegVol's CropForeground).
        image: (1, 1, cd, ch, cw) float32 normalised volume, cropped to ``crop``.
        zoom_out_embedding: the encoder output for the whole crop resized to the model frame.
        window_cache: encoder outputs of zoom-in windows, keyed by the window's start (z, y, x) in the crop,
            and of resampled ROIs, keyed by ("roi", *bounds).
        geodesic_cache: each click's geodesic reach in a resampled ROI view (``propagation.ClickDistances``,
            host memory), keyed by ("geo", *ROI bounds, z, y, x frame voxel): a pure function of the view
            and the click, so it never goes stale.
        seed: base seed for the corrector's error sampling (replays are bit-identical).
        exclusive_objects: the objects are mutually exclusive, as the labels of one label map are: a voxel one
            object's foreground click marks is background to the session's other objects, so each object's
            click steps also see the other objects' foreground clicks inside its ROI as background clicks
            (``app.models.corrector_step.exclusion_clicks``). False: every object is segmented on its own prompts only
            (objects that may overlap, e.g. an organ and a lesion inside it).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    device: torch.device
    crop: Bounds
    image: torch.Tensor
    zoom_out_embedding: Embedding
    window_cache: dict[tuple[Any, ...], Embedding] = field(default_factory=dict)
    geodesic_cache: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    objects: dict[int, ObjectState] = field(default_factory=dict)
    seed: int = 0
    exclusive_objects: bool = True

    @property
    def nbytes(self) -> int:
        """Bytes held by this session (image, embeddings, objects on the device; the geodesic cache on the host)."""
        n = self.image.element_size() * self.image.nelement()
        n += _embedding_nbytes(self.zoom_out_embedding)
        n += sum(_embedding_nbytes(e) for e in self.window_cache.values())
        n += sum(c.nbytes + d.nbytes for c, d in self.geodesic_cache.values())
        n += sum(o.nbytes for o in self.objects.values())
        return n


def _embedding_nbytes(emb: Embedding) -> int:
    if isinstance(emb, torch.Tensor):
        return emb.element_size() * emb.nelement()
    if isinstance(emb, (tuple, list)):
        return sum(_embedding_nbytes(e) for e in emb)
    return 0
