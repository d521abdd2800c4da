from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from http_fixtures import NetworkGuard  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A contract-following ONNX model with random weights and a `factors` output."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_model_no_factors_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny_nf.onnx", with_factors=False)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real, permissively licensed photo (scikit-image's astronaut, public domain)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture()
def guard(monkeypatch):
    """Fails the test if anything connects beyond loopback (DNS is a fixed table)."""
    guard = NetworkGuard().install(monkeypatch)
    yield guard
    assert guard.blocked == [], f"a connection left loopback: {guard.blocked}"
