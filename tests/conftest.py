"""Shared pytest settings and helpers: hypothesis without per-example deadlines (CI
machines are noisy; speed lives in bench/speed.py, never in tests), the repo root on
sys.path, writers of stand-in files in real formats, and the helpers of the train.py tests
(test_cli, test_train, test_train_cli, test_runfolder): in-process and subprocess runs,
folder listings, and the one place that reads train.py's data and state records."""
import json
import os
import subprocess
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


# ----------------------------------------------------------------------------- train.py runs

def run_in(capsys, *argv):
    """train.main in-process -> (exit code, stdout, stderr), like a finished `python train.py argv`
    (argparse's own errors, bad types, exit through SystemExit)."""
    import train
    capsys.readouterr()
    try:
        rc = train.main(list(argv))
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def cli(*args, **kw):
    """A real `python train.py args` process -> subprocess.CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, **kw)


def popen(*args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, text=True, **kw)


def one_line(stderr):
    """The only line of stderr (asserts one line, no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def listing(folder):
    """{relative path: bytes} of every file under folder: to show nothing was touched."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def copy_run(src, dst):
    os.makedirs(dst)
    for name, blob in listing(src).items():
        with open(os.path.join(dst, name), "wb") as f:
            f.write(blob)
    return dst


def rows(out):
    """The rows of out/metrics.jsonl."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run (do not modify: copy it)."""
    import train
    out = str(tmp_path_factory.mktemp("finished") / "run")
    assert train.main(QUICK + ["--epochs", "1", "--out", out]) == 0
    return out


# ----------------------------------------------------------------------------- train.py's records
# The only place the tests build or read train.py's records (data.TrainData, runfolder.TrainState) by hand.

def new_run(argv):
    """A new CPU run of train.py's flags argv, before any step -> (args, data, state)."""
    import data
    import train
    args = train.build_parser().parse_args(QUICK + list(argv))
    cpu = torch.device("cpu")
    d = data.prepare_training_data(data.DataConfig.from_config(vars(args)), cpu)
    return args, d, train.init_state(args, d, cpu, None)


def noisy_labels(d):
    """(N,) the training labels a run drew."""
    return d.y_noisy


def stop_state(sig, dist=None):
    """The part of a run state that train_cli's stop functions read: the caught signal (or None)."""
    import distributed
    import runfolder
    import train_cli
    return runfolder.TrainState(nets=[], opts=[], y_noisy=torch.zeros(1), dist=dist or distributed.Dist(),
                                stop=train_cli.StopFlag(sig))


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


def record_value_reads(monkeypatch):
    """From now until monkeypatch.undo(): the names of the calls that read a tensor's value
    (int(), float(), bool(), .item(), .tolist(); on CUDA each is a host sync), appended to the returned list."""
    reads = []
    for name in ("__int__", "__float__", "__bool__", "item", "tolist"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=orig, _n=name: (reads.append(_n), _o(t, *a))[1])
    return reads


def check_dkan_autocast_matches_float32(p, v, g, device_type):
    """DKAN under bf16 autocast on `device_type` against autocast off: Φ, its gradient along g
    (backward inside the region), the float64 moments and the scores equal bit for bit; the
    logits come from a bf16 matmul; every gradient is finite. p: kan params (trainable),
    v: (B, d) requiring grad, g: (B, d, F)."""
    import kan
    runs = []
    for on in (False, True):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=on):
            phi = kan.dkan_features(p, v)
            m = kan.kan_moments(phi)
            runs.append((phi, *m, kan.kan_scores_from_moments(m, p), torch.autograd.grad(phi, v, g, retain_graph=True)[0]))
            y = kan.kan_forward_features(p, phi)
        assert y.dtype == (torch.bfloat16 if on else torch.float32)
        y.float().square().sum().backward()
        assert all(t.grad.isfinite().all() for t in (p["base_weight"], p["spline_weight"], v))
    for eager, amp in zip(*runs):
        assert amp.dtype == eager.dtype and torch.equal(amp, eager)


def check_one_line_value_error(argument, call):
    """call() raises a one-line ValueError whose message starts with `argument:`."""
    with pytest.raises(ValueError) as info:
        call()
    assert "\n" not in str(info.value) and str(info.value).startswith(argument + ":"), str(info.value)
