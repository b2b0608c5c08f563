"""Write the shipped weights (``app.models.weights`` format) plus a JSON sidecar with the training meta."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from app.models.weights import save_checkpoint


def export_weights(
    path: str | Path, config_name: str, backbone: nn.Module, corrector: nn.Module, meta: dict[str, Any]
) -> Path:
    """Save ``{"format", "config", "backbone", "corrector", "meta"}`` to ``path`` and ``meta`` to ``path.json``.

    Both files are written atomically (temporary file + rename), so a reader never sees a partial file.
    """
    target = Path(path)
    save_checkpoint(target, config_name, backbone, corrector, meta=_plain(meta))
    sidecar = target.with_suffix(target.suffix + ".json") if target.suffix != ".pt" else target.with_suffix(".json")
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(_plain(meta), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    return sidecar


def _plain(value: Any) -> Any:
    """Only str / int / float / bool / None / list / dict, so the checkpoint loads with weights_only=True."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
