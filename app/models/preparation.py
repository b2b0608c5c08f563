"""Session preparation: the volume normalised, padded and moved to the device, its zoom-out view encoded once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Resize
from torch.nn import functional as F

from app.models import geometry as geo
from app.models.backbone import Backbone
from app.models.preprocess import foreground_bounds, normalize_intensity
from app.models.segvol_inference import zoom_out_view
from app.models.state import SessionState


def prepare_state(backbone: Backbone, device: torch.device, volume: np.ndarray, spacing: Sequence[float], *,
                  seed: int, exclusive_objects: bool, segvol: bool) -> SessionState:
    """A new session's state: its arguments checked first (``ValueError`` naming the argument).

    Args:
        backbone: the predictor's backbone (its frame and encoder).
        volume: (D, H, W) real-valued array, any dtype.
        spacing: (sz, sy, sx) in mm.
        seed: base seed of the corrector's error sampling (same seed + same prompts = same result).
        exclusive_objects: the objects are the labels of one label map (``SessionState``).
        segvol: resize the zoom-out view as SegVol does (``zoom_in="segvol"``).
    """
    arr = geo.validate_volume(volume)
    sp = geo.validate_spacing(spacing)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if not isinstance(exclusive_objects, bool):
        raise ValueError(f"exclusive_objects: expected a bool, got {exclusive_objects!r}")
    frame: tuple[int, int, int] = tuple(backbone.frame)  # type: ignore[assignment]
    norm = normalize_intensity(arr)
    crop = foreground_bounds(norm)
    image = torch.from_numpy(norm).to(device)
    # Pad (at the end) to at least one window so zoom-in windows never need MONAI's implicit padding and a
    # window's cache key is simply its start in the volume grid.
    pad = [max(f - s, 0) for f, s in zip(frame, image.shape, strict=True)]
    image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))[None, None]
    if segvol:  # SegVol resizes the image with nearest-exact (MONAI 0.9.0 Resize)
        zoom_out = zoom_out_view(image[0, 0][geo.slices_of(crop)], frame)[None]
    else:
        zoom_out = Resize(spatial_size=frame, mode="nearest")(image[0][(slice(None), *geo.slices_of(crop))])
    embedding = backbone.encode(torch.as_tensor(zoom_out, device=device)[None].float())
    return SessionState(
        shape=tuple(int(s) for s in arr.shape),  # type: ignore[arg-type]
        spacing=sp,
        device=device,
        crop=crop,
        image=image,
        zoom_out_embedding=embedding,
        seed=seed,
        exclusive_objects=exclusive_objects,
    )
