"""The run config documented in pyproject.toml is the one the code uses."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shared.config import DEFAULTS, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_equals_code_defaults():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULTS


def test_readme_documents_every_run_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in readme]
    assert not missing


def test_unknown_key_and_bad_fusion_are_rejected():
    with pytest.raises(ValueError, match="unknown run config key 'nois-multiplier'"):
        resolve({"nois-multiplier": 1.0})
    with pytest.raises(ValueError, match="fusion 'sum': choose one of concat, gated, attention"):
        resolve(None, {"fusion": "sum"})
    assert resolve(None, {"privacy": "none", "lr": "0.1"})["privacy"] == "none"
    with pytest.raises(ValueError, match="privacy 'off': choose one of user, local, central, both, none"):
        resolve(None, {"privacy": "off"})
    with pytest.raises(ValueError, match="canaries audit the server-side mechanism"):
        resolve(None, {"canaries": 10})


def test_user_level_budget_settings_are_checked():
    config = resolve(None, {"user-epsilon": "inf"})
    assert config["privacy"] == "user" and config["user-epsilon"] == float("inf")
    with pytest.raises(ValueError, match="user-epsilon must be positive"):
        resolve(None, {"user-epsilon": 0})
    with pytest.raises(ValueError, match="and their sum below 1 \\(the rest is the co-occurrence release's\\)"):
        resolve(None, {"popularity-budget-share": 0.5, "selection-budget-share": 0.5})
    with pytest.raises(ValueError, match="cooccurrence-items and max-factors must be at least 1"):
        resolve(None, {"max-factors": 0})
