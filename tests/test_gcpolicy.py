"""The gateway's garbage-collector settings (services/gateway/gcpolicy.py)."""

from __future__ import annotations

import gc

import pytest

from services.gateway import gcpolicy
from services.gateway.settings import GatewaySettings
from services.gateway.wswrite import DirectWrite
from shared.errors import ConfigError
from shared.settings import Env

ENV = {"TETHER_JWT_SECRET": "x" * 32}


def test_gc_settings_default_and_from_env() -> None:
    """GC freeze and thresholds default sensibly and are read from the environment."""
    settings = GatewaySettings.from_env(Env(ENV))
    assert settings.gc_freeze is True
    assert settings.gc_thresholds == gcpolicy.DEFAULT_THRESHOLDS
    settings = GatewaySettings.from_env(
        Env({**ENV, "TETHER_GC_FREEZE": "false", "TETHER_GC_THRESHOLDS": " 700, 10 ,10"})
    )
    assert settings.gc_freeze is False
    assert settings.gc_thresholds == (700, 10, 10)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("700,10", "three integers"),
        ("700,10,10,10", "three integers"),
        ("700,ten,10", "'ten' is not a valid int"),
        ("0,10,10", "at least 1"),
    ],
)
def test_gc_thresholds_errors_name_the_variable(raw: str, says: str) -> None:
    """A bad TETHER_GC_THRESHOLDS is a config error naming the variable and the problem."""
    with pytest.raises(ConfigError, match="TETHER_GC_THRESHOLDS") as error:
        GatewaySettings.from_env(Env({**ENV, "TETHER_GC_THRESHOLDS": raw}))
    assert says in str(error.value)


def test_apply_sets_thresholds_and_freezes() -> None:
    """apply() sets the collection thresholds and freezes what exists at start-up."""
    before = gc.get_threshold()
    try:
        gcpolicy.apply((5_000, 15, 25), freeze=True)
        assert gc.get_threshold() == (5_000, 15, 25)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_direct_write_falls_back_without_aiohttp_internals() -> None:
    """DirectWrite answers False (queue the frame) when aiohttp lacks the internals it uses."""

    class Bare:
        pass

    written: list[bytes] = []
    direct = DirectWrite(Bare(), written.append)  # type: ignore[arg-type]
    assert direct(b"frame") is False and written == []
