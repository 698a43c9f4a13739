"""Shared pytest settings and helpers: hypothesis without per-example deadlines (CI
machines are noisy; speed lives in bench/speed.py, never in tests), the repo root on
sys.path, and writers of stand-in files in real formats."""
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

settings.register_profile("default", deadline=None, max_examples=60, derandomize=True)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def save_cifar_n(path, labels):
    """Write a CIFAR-N style label file: labels: dict key -> (N,) int array, via torch.save.

    The real files (CIFAR-10_human.pt, CIFAR-100_human.pt) are dicts of numpy int
    arrays; the tests make tiny stand-ins that go through noise.load_cifar_n unchanged."""
    torch.save({k: np.asarray(v) for k, v in labels.items()}, path)


QUICK = ["--limit-train", "300", "--epochs", "2", "--batch-size", "64"]   # a 2-epoch digits run in seconds


@pytest.fixture(scope="session")
def dfc_run(tmp_path_factory):
    """A finished quick DFC run with --save-masks (read by test_diagnostics and test_plot)."""
    import train
    out = str(tmp_path_factory.mktemp("runs") / "dfc")
    assert train.main(QUICK + ["--out", out, "--save-masks"]) == 0
    return out


@pytest.fixture(scope="session")
def fc_run(tmp_path_factory):
    """A finished quick FC run (the base head of dfc_run)."""
    import train
    out = str(tmp_path_factory.mktemp("runs") / "fc")
    assert train.main(QUICK + ["--out", out, "--head", "fc"]) == 0
    return out
