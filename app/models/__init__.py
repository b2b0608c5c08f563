"""The model package's public surface: build a predictor, the configuration registry, the predictor and its state.

    from app.models import build_predictor
    predictor = build_predictor("compact")               # the registry's name, the shipped weights
    state = predictor.init_state(volume, spacing)        # a SessionState: everything one session owns
    change = predictor.add_box(state, 1, [z0, y0, x0, z1, y1, x1])

Every other module of the package is an implementation detail of these names. They are resolved on first
use (PEP 562) rather than imported here: ``import app.models.configs`` or ``app.models.geometry`` then stays
free of torch and MONAI, which the predictor's modules pull in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.models.build import build_backbone, build_corrector, build_predictor, load_model
    from app.models.configs import DEFAULT_CONFIG, MODEL_CONFIGS, ModelConfig, get_model_config
    from app.models.predictor import Predictor, UnknownObjectError
    from app.models.predictor_config import PredictorConfig
    from app.models.state import Change, Click, ObjectState, SessionState
    from app.models.weights import CheckpointError

_HOMES = {
    "build_predictor": "app.models.build",
    "build_backbone": "app.models.build",
    "build_corrector": "app.models.build",
    "load_model": "app.models.build",
    "DEFAULT_CONFIG": "app.models.configs",
    "MODEL_CONFIGS": "app.models.configs",
    "ModelConfig": "app.models.configs",
    "get_model_config": "app.models.configs",
    "Predictor": "app.models.predictor",
    "UnknownObjectError": "app.models.predictor",
    "PredictorConfig": "app.models.predictor_config",
    "Change": "app.models.state",
    "Click": "app.models.state",
    "ObjectState": "app.models.state",
    "SessionState": "app.models.state",
    "CheckpointError": "app.models.weights",
}

__all__ = [
    "DEFAULT_CONFIG",
    "MODEL_CONFIGS",
    "Change",
    "CheckpointError",
    "Click",
    "ModelConfig",
    "ObjectState",
    "Predictor",
    "PredictorConfig",
    "SessionState",
    "UnknownObjectError",
    "build_backbone",
    "build_corrector",
    "build_predictor",
    "get_model_config",
    "load_model",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'app.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
