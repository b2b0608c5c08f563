"""Checkpoint files: read the published SegVol layouts and our own, load them strictly, save ours.

Layouts read (all with ``torch.load(weights_only=True)``; no code in a checkpoint ever runs):
    HF ``BAAI/SegVol`` ``pytorch_model.bin``   flat state_dict, keys ``model.*``
    SegFM training checkpoint                   ``{"model_state_dict": {"model.*": ...}, ...}``
    ``SegVol_v1.pth``                           ``{"model": {"module.*": ...}, "epoch": ...}`` (or "state_dict")
    ours, ``CHECKPOINT_FORMAT``                 ``{"format", "config", "backbone", "corrector", "meta"}``

Loading is strict. The only keys tolerated are those the published weights make unavoidable:
``*.norm_cross_attn.*`` missing from the file (MONAI < 1.3 builds lack them; the ViT never uses them),
``text_encoder.*`` in the file when the model is built without its text branch, and the CLIP
``position_ids`` buffer older ``transformers`` versions saved. Older ``transformers`` also nested the
CLIP weights one level deeper (``clip_text_model.text_model.*``); those keys are renamed, not ignored.
Anything else missing, unexpected or of another shape raises ``CheckpointError`` naming the keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from app.models.configs import ModelConfig

CHECKPOINT_FORMAT = "segvol-interactive/1"
DEFAULT_PUBLISHED_CONFIG = "segvol-base"  # what a published SegVol checkpoint is, when nothing says otherwise
MAX_LISTED_KEYS = 20

_STRIPPED_PREFIXES = ("module.", "model.")  # DataParallel, then the HF wrapper; in this order
_LEGACY_CLIP_PREFIX = "text_encoder.clip_text_model.text_model."
_CLIP_PREFIX = "text_encoder.clip_text_model."
_TEXT_PREFIX = "text_encoder."
_NORM_CROSS_ATTN = re.compile(r"(^|\.)norm_cross_attn\.")
_POSITION_IDS = _CLIP_PREFIX + "embeddings.position_ids"

PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read into memory, with the published key prefixes stripped.

    Attributes:
        path: where it was read from.
        source_format: ``CHECKPOINT_FORMAT``, "state_dict" (flat, e.g. HF pytorch_model.bin),
            "model_state_dict" (SegFM) or "model" / "state_dict" (nested, e.g. SegVol_v1.pth).
        stripped_prefix: the prefix removed from the backbone keys ("model.", "module.", "" ...).
        backbone: state_dict keyed like our backbone's ``state_dict()``.
        corrector: the corrector's state_dict (ours only), or None.
        config: the model config the file declares (ours only), or None.
        meta: free-form metadata (ours only): training data, steps, metrics ...
    """

    path: str
    source_format: str
    stripped_prefix: str
    backbone: dict[str, Tensor]
    corrector: dict[str, Tensor] | None = None
    config: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_checkpoint`` did.

    Attributes:
        config: the model config the weights were loaded into.
        source_format, stripped_prefix: as in ``Checkpoint``.
        n_tensors: backbone tensors loaded.
        n_params: values in those tensors.
        ignored_keys: tolerated keys (missing or unexpected) that were not loaded.
        has_corrector: the file holds corrector weights (loaded when a corrector was given).
        meta: the file's metadata.
    """

    config: str
    source_format: str
    stripped_prefix: str
    n_tensors: int
    n_params: int
    ignored_keys: tuple[str, ...]
    has_corrector: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines."""
        prefix = f", prefix {self.stripped_prefix!r} stripped" if self.stripped_prefix else ""
        lines = [
            f"config: {self.config}",
            f"format: {self.source_format}{prefix}",
            f"backbone: {self.n_tensors} tensors, {self.n_params / 1e6:.1f}M values",
            f"corrector: {'yes' if self.has_corrector else 'none in file'}",
        ]
        groups: dict[str, int] = {}
        for key in self.ignored_keys:
            reason = _ignore_reason(key)
            groups[reason] = groups.get(reason, 0) + 1
        lines += [f"ignored: {count} keys ({reason})" for reason, count in groups.items()]
        if self.meta:
            lines.append(f"meta: {self.meta}")
        return "\n".join(lines)


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported layout (module docstring) into a ``Checkpoint``; ``CheckpointError`` otherwise."""
    name = os.fspath(path)
    if not Path(name).is_file():
        raise CheckpointError(f"path: no checkpoint file at {name!r}")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError ... for bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"path: cannot read {name!r}: corrupted, truncated, or not a tensors-only PyTorch checkpoint "
            f"({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"path: {name!r} holds a {type(obj).__name__}, not a checkpoint dict")

    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("segvol-interactive/"):
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(f"path: {name!r} is {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
        corrector = obj.get("corrector")
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"path: {name!r} has a 'meta' that is not a dict")
        return Checkpoint(
            path=name,
            source_format=CHECKPOINT_FORMAT,
            stripped_prefix="",
            backbone=_tensor_dict(obj.get("backbone"), name, "backbone"),
            corrector=None if corrector is None else _tensor_dict(corrector, name, "corrector"),
            config=obj.get("config") if isinstance(obj.get("config"), str) else None,
            meta=dict(meta),
        )

    source_format, state = "state_dict", obj
    for nested in ("model_state_dict", "model", "state_dict"):  # SegFM, then SegVol_v1.pth variants
        if isinstance(obj.get(nested), Mapping):
            source_format, state = nested, obj[nested]
            break
    backbone, prefix = _strip_prefixes(_tensor_dict(state, name, source_format))
    return Checkpoint(path=name, source_format=source_format, stripped_prefix=prefix, backbone=backbone)


def load_checkpoint(
    source: PathLike | Checkpoint,
    backbone: nn.Module,
    corrector: nn.Module | None = None,
    *,
    config_name: str,
) -> LoadReport:
    """Load a checkpoint into ``backbone`` (and ``corrector`` when given and the file has one), strictly.

    Args:
        source: a file path or an already read ``Checkpoint``.
        backbone: built for ``config_name``; whether it has a ``text_encoder`` decides if text keys load.
        corrector: receives the file's corrector weights, if any (strict, nothing tolerated).
        config_name: the config ``backbone`` was built from; must match the file's if it declares one.
    Raises:
        CheckpointError: unreadable file, other config, or missing / unexpected / mis-shaped keys.
            The modules are untouched when it raises.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    resolve_config_name(ckpt, config_name)
    backbone_state, ignored = _fit_state(ckpt, backbone.state_dict(), config_name)
    corrector_state = None
    if corrector is not None and ckpt.corrector is not None:
        corrector_state, _ = _fit_state(
            ckpt, corrector.state_dict(), config_name, ckpt.corrector, "corrector"
        )

    backbone.load_state_dict(backbone_state, strict=False)  # only tolerated keys are absent (checked above)
    if corrector is not None and corrector_state is not None:
        corrector.load_state_dict(corrector_state, strict=True)
    return LoadReport(
        config=config_name,
        source_format=ckpt.source_format,
        stripped_prefix=ckpt.stripped_prefix,
        n_tensors=len(backbone_state),
        n_params=sum(t.numel() for t in backbone_state.values()),
        ignored_keys=tuple(ignored),
        has_corrector=ckpt.corrector is not None,
        meta=dict(ckpt.meta),
    )


def load_into(
    path: PathLike,
    config: ModelConfig | str,
    backbone: nn.Module,
    corrector: nn.Module | None = None,
    *,
    with_text: bool = False,
) -> LoadReport:
    """``load_checkpoint`` for modules built from ``config`` (what ``build_predictor`` calls).

    ``with_text`` states how ``backbone`` was built; it must agree with whether it has a text branch.
    """
    name = config if isinstance(config, str) else config.name
    if with_text != hasattr(backbone, "text_encoder"):
        raise ValueError(
            f"with_text: {with_text} but the backbone was built {'without' if with_text else 'with'} text"
        )
    return load_checkpoint(path, backbone, corrector, config_name=name)


def resolve_config_name(ckpt: Checkpoint, requested: str | None = None) -> str:
    """The config to build for ``ckpt``: ``requested``, else the file's, else ``segvol-base``.

    Raises:
        CheckpointError: the file declares another config than ``requested``.
    """
    if requested is not None and ckpt.config is not None and ckpt.config != requested:
        raise CheckpointError(
            f"config: {ckpt.path!r} holds weights for config {ckpt.config!r}, not {requested!r}"
        )
    return requested or ckpt.config or DEFAULT_PUBLISHED_CONFIG


def save_checkpoint(
    path: PathLike,
    config_name: str,
    backbone: nn.Module,
    corrector: nn.Module | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write our format atomically: ``{"format", "config", "backbone", "corrector", "meta"}``.

    ``meta`` must hold only plain values (str, int, float, bool, None, lists, tuples, dicts) so that
    the file stays loadable with ``weights_only=True``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_name,
        "backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
        "corrector": None
        if corrector is None
        else {k: v.detach().cpu().clone() for k, v in corrector.state_dict().items()},
        "meta": dict(meta or {}),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)


# --- internals -------------------------------------------------------------------------------------


def _tensor_dict(state: Any, path: str, what: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"path: {path!r} has no {what} state_dict (empty or not a dict)")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"path: {path!r}: {what} entries that are not tensors: {_listed(bad)}")
    return dict(state)


def _strip_prefixes(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Remove ``module.`` then ``model.`` from every key that has them, rename legacy CLIP keys.

    Returns the stripped state and the most common prefix removed.
    """
    out: dict[str, Tensor] = {}
    prefixes: dict[str, int] = {}
    for key, value in state.items():
        stripped = key
        for prefix in _STRIPPED_PREFIXES:
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix) :]
        removed = key[: len(key) - len(stripped)]
        prefixes[removed] = prefixes.get(removed, 0) + 1
        if stripped.startswith(_LEGACY_CLIP_PREFIX):
            stripped = _CLIP_PREFIX + stripped[len(_LEGACY_CLIP_PREFIX) :]
        if stripped in out:
            raise CheckpointError(f"path: two keys map to {stripped!r} once prefixes are stripped")
        out[stripped] = value
    return out, max(prefixes, key=prefixes.__getitem__)


def _fit_state(
    ckpt: Checkpoint,
    target: Mapping[str, Tensor],
    config_name: str,
    state: Mapping[str, Tensor] | None = None,
    what: str = "backbone",
) -> tuple[dict[str, Tensor], list[str]]:
    """Check ``state`` (default: the backbone's) against ``target``; return the loadable part + ignored keys."""
    state = ckpt.backbone if state is None else state
    tolerant = what == "backbone"
    model_has_text = any(k.startswith(_TEXT_PREFIX) for k in target)
    ignored: list[str] = []
    missing: list[str] = []
    for key in target:
        if key in state:
            continue
        if tolerant and _NORM_CROSS_ATTN.search(key):
            ignored.append(key)
        else:
            missing.append(key)
    unexpected: list[str] = []
    for key in state:
        if key in target:
            continue
        if tolerant and (key == _POSITION_IDS or (key.startswith(_TEXT_PREFIX) and not model_has_text)):
            ignored.append(key)
        else:
            unexpected.append(key)
    mismatched = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(target[key].shape)})"
        for key in target
        if key in state and state[key].shape != target[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} of another shape: {_listed(mismatched)}")
        raise CheckpointError(
            f"path: {ckpt.path!r} does not fit config {config_name!r} ({what}): " + "; ".join(problems)
        )
    return {k: v for k, v in state.items() if k in target}, ignored


def _ignore_reason(key: str) -> str:
    if _NORM_CROSS_ATTN.search(key):
        return "norm_cross_attn, absent from pre-1.3 MONAI checkpoints, unused"
    if key == _POSITION_IDS:
        return "CLIP position_ids buffer saved by older transformers"
    if key.startswith(_TEXT_PREFIX):
        return "text branch not built; pass --with-text / with_text=True to load it"
    return "tolerated"


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")
