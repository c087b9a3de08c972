"""Shared fixtures: compiled modules (cached per test session) and Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker: pytest -n splits the cores
    torch.set_num_threads(1)

import pytest
from hypothesis import HealthCheck, settings

import mirasc

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.miras"))

# The default profile draws the same examples on every run (a red suite is a defect, not a
# draw); "thorough" draws new ones, 200 per test, to look for defects.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    derandomize=True,
)
settings.register_profile(
    "thorough", parent=settings.get_profile("ci"), max_examples=200, derandomize=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mirasc-cache")


@pytest.fixture(scope="session")
def compile_text(cache_dir):
    """Compile spec text into a module, reusing the on-disk cache across the session."""
    counter = iter(range(10**9))

    def build(text: str):
        path = cache_dir / f"spec_{next(counter)}.miras"
        path.write_text(text)
        return mirasc.compile(path, cache_dir=cache_dir)

    return build


@pytest.fixture(scope="session")
def shipped(cache_dir):
    """Every shipped spec, compiled: {name: module}."""
    return {p.stem: mirasc.compile(p, cache_dir=cache_dir) for p in SPECS}
