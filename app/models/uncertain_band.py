"""An object's uncertainty band kept across its GRU steps, so a click does not scan the whole ROI again.

The band (``sampling.uncertain_candidates``: the ROI voxels with |p - 0.5| < tau) is a pure function of the
logits' values. It is keyed by the tensor's identity, held weakly (the cache never keeps an old ROI tensor
alive): every step either builds a new tensor, or is a GRU step that writes its at most 2K voxels in place
(``corrector_step.gru_step``) and carries the band over to the written values itself
(``sampling.update_candidates``), so a band found under a tensor's identity always matches its values. A box, decoder
or mask step makes a new tensor and finds its band there (``band_for``, called by the predictor), off the GRU
click's path; after an undo or a grown ROI the next GRU step finds it once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch import Tensor

from app.models.sampling import uncertain_candidates, update_candidates


@dataclass(frozen=True)
class UncertainBand:
    """The band of one logits tensor.

    Attributes:
        source: weak reference to the (rd, rh, rw) logits the band belongs to.
        tau: the band's half-width.
        candidates: (c,) long ascending flat indices into ``source``.
    """

    source: weakref.ref[Tensor]
    tau: float
    candidates: Tensor

    @property
    def nbytes(self) -> int:
        return self.candidates.element_size() * self.candidates.nelement()


def band_of(cached: UncertainBand | None, logits: Tensor, tau: float) -> Tensor:
    """(c,) the band's candidates of ``logits``: from ``cached`` when it belongs to this very tensor and tau."""
    if cached is not None and cached.tau == tau and cached.source() is logits:
        return cached.candidates
    return uncertain_candidates(logits, tau)


def band_for(cached: UncertainBand | None, logits: Tensor, tau: float) -> UncertainBand:
    """The band of ``logits``, kept: ``cached`` when it is this tensor's, else found by a pass over the ROI."""
    return UncertainBand(weakref.ref(logits), tau, band_of(cached, logits, tau))


def carry_band(candidates: Tensor, new_logits: Tensor, written: Tensor, tau: float) -> UncertainBand:
    """The band of ``new_logits``, which equals the tensor of ``candidates`` except at ``written`` ((m,) long
    ascending unique flat indices)."""
    return UncertainBand(weakref.ref(new_logits), tau, update_candidates(candidates, new_logits, written, tau))
