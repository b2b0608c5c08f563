"""Settings from the environment and from ``python -m app`` flags; random weights only when asked for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.__main__ import parse_args, settings_overrides
from app.config import Settings


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("SEGSVC_MAX_SESSIONS", "3")
    monkeypatch.setenv("SEGSVC_CORS_ORIGINS", '["http://viewer.local"]')
    s = Settings()
    assert s.redis_url == "redis://example:6379/3" and s.max_sessions == 3
    assert s.cors_origins == ["http://viewer.local"]


def test_random_weights_must_be_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValidationError, match="allow_random_weights"):
        Settings(weights=None)
    assert Settings(weights=None, allow_random_weights=True).weights is None
    assert Settings().weights == "default"


def test_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSVC_PORT", "9999")
    args = parse_args(["--port", "8123", "--config", "segvol-test", "--random-weights", "--max-sessions", "2",
                       "--idle-timeout", "5", "--no-warmup"])
    s = Settings(**settings_overrides(args))
    assert (s.port, s.model_config_name, s.weights, s.allow_random_weights) == (8123, "segvol-test", None, True)
    assert (s.max_sessions, s.idle_timeout_s, s.warmup) == (2, 5.0, False)
    assert Settings(**settings_overrides(parse_args([]))).port == 9999  # environment when no flag


def test_object_exclusivity_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.sessions.services import limits_from

    assert Settings().exclusive_objects is True
    assert limits_from(Settings()).exclusive_objects is True
    assert Settings(**settings_overrides(parse_args(["--independent-objects"]))).exclusive_objects is False
    monkeypatch.setenv("SEGSVC_EXCLUSIVE_OBJECTS", "false")
    assert limits_from(Settings()).exclusive_objects is False
    with pytest.raises(ValidationError, match="exclusive_objects"):
        Settings(exclusive_objects="sometimes")


def test_random_weights_and_weights_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        settings_overrides(parse_args(["--random-weights", "--weights", "x.pt"]))


def test_max_age_not_below_idle_timeout() -> None:
    with pytest.raises(ValidationError, match="max_session_age_s"):
        Settings(idle_timeout_s=100, max_session_age_s=10)


def test_click_propagation_setting_reaches_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.models.propagation import PropagationConfig
    from app.sessions.services import load_predictor

    assert Settings().click_propagation_reach == PropagationConfig().reach  # one default for both
    assert Settings(**settings_overrides(parse_args(["--click-propagation-reach", "0"]))).click_propagation_reach == 0
    monkeypatch.setenv("SEGSVC_CLICK_PROPAGATION_REACH", "7.5")
    s = Settings(model_config_name="segvol-test", weights=None, allow_random_weights=True)
    assert load_predictor(s).config.propagation_reach == 7.5
    with pytest.raises(ValidationError, match="click_propagation_reach"):
        Settings(click_propagation_reach=-1)


def test_click_region_setting_reaches_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.models.click_regions import RegionConfig
    from app.sessions.services import load_predictor

    assert Settings().click_region_reach == RegionConfig().reach == RegionConfig().foreground_reach  # one default
    assert Settings(**settings_overrides(parse_args(["--click-region-reach", "0"]))).click_region_reach == 0
    monkeypatch.setenv("SEGSVC_CLICK_REGION_REACH", "12.5")
    s = Settings(model_config_name="segvol-test", weights=None, allow_random_weights=True)
    config = load_predictor(s).config
    assert config.click_region_reach == config.click_region_foreground_reach == 12.5
    with pytest.raises(ValidationError, match="click_region_reach"):
        Settings(click_region_reach=-1)
