"""The region constraint of a scribble or lasso: the voxels the user drew get the prompt's label.

The region is fed as clicks are (``app.models.regions.sample_clicks``); the decoder step's result is then
constrained here, so that the model decides the rest of the object but never the voxels the user drew.
"""

from __future__ import annotations

import numpy as np
import torch

from app.coordinates import Bounds
from app.models import geometry as geo
from app.models import regions
from app.models.predictor_config import PredictorConfig
from app.models.state import SessionState


def constrain(state: SessionState, roi: Bounds, logits: torch.Tensor, flat: np.ndarray, label: int,
              config: PredictorConfig) -> tuple[Bounds, torch.Tensor]:
    """``logits`` over ``roi`` grown to cover the region, with the region's voxels set to ``label``."""
    grown = geo.bounds_union(roi, regions.bounds(flat, state.shape))
    assert grown is not None
    if grown != roi:
        out = torch.full(geo.bounds_shape(grown), config.background_logit, device=state.device)
        rel = tuple(slice(roi[a] - grown[a], roi[a + 3] - grown[a]) for a in range(3))
        out[rel] = logits
    else:
        out = logits.clone()  # never mutate a tensor an undo entry may hold
    zyx = np.unravel_index(flat, state.shape)
    local = np.ravel_multi_index(tuple(zyx[a] - grown[a] for a in range(3)), geo.bounds_shape(grown))
    value = config.mask_logit if label == 1 else -config.mask_logit
    out.view(-1)[torch.as_tensor(local, device=state.device)] = value
    return grown, out
