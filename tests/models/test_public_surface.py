"""The model package's public surface: every name it lists resolves, and the registry imports without torch."""

from __future__ import annotations

import subprocess
import sys

import app.models


def test_every_public_name_resolves_to_its_home() -> None:
    for name in app.models.__all__:
        value = getattr(app.models, name)
        assert getattr(value, "__name__", name) == name or name.isupper()
    assert {"Predictor", "build_predictor", "SessionState"} <= set(dir(app.models))


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        app.models.predict_everything  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "predict_everything" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_the_registry_and_the_coordinates_import_without_torch() -> None:
    # The names resolve lazily, so reading the registry (or the coordinate rules) never loads torch or MONAI.
    code = ("import sys, app.models, app.models.configs, app.coordinates; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
