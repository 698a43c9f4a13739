"""One-call GPU check of dcm-ref: CIFAR-shaped training speed and host syncs per step.

Called by bench/gpu_check.sh (which also runs the CUDA tests and `python -m bench speed
--device cuda`); writes markdown tables. Every number comes from train.py itself, run as a user
runs it, on a synthetic CIFAR-10 folder in the real pickle format (random pixels and
labels: speed does not depend on what the images show).

    python bench/gpu_check.py epochs --out OUT_DIR     # preact-resnet18, fc vs dfc, eager/amp/compile
    python bench/gpu_check.py syncs --out OUT_DIR      # host syncs per training step: fc, dfc, the modules
    python bench/gpu_check.py all --dry-run            # check every train.py command parses; run nothing

Host syncs: train.py runs with torch.cuda.set_sync_debug_mode("warn"), so each
synchronising CUDA call (.item(), .cpu(), nonzero, ...) prints one warning. Two runs
that differ only in their number of training steps (1 epoch of 10 vs 20 batches, no
per-epoch pass over the training set) differ only by the steps' syncs:
syncs per step = (warnings(20 steps) - warnings(10 steps)) / 10.
"""
import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository (train.py)
SYNC_WARNING = "called a synchronizing CUDA operation"
# Most informative first: a part that hits its time limit keeps the rows it finished (each row
# is appended to the markdown as soon as it is measured), so fp32 --compile comes last.
MODES = {"eager": [], "amp": ["--amp"], "compile+amp": ["--compile", "--amp"], "compile": ["--compile"]}
HEADS = ("fc", "dfc")
SYNC_HEADS = ("fc", "dfc", "dkan")   # the syncs part: every head train.py steps with (docs/design.md §10)


def write_synthetic_cifar10(parent, n_train=50000, n_test=10000, seed=0):
    """cifar-10-batches-py (5 train batches + test_batch, python pickles) of random images."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(parent, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    per = n_train // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"synthetic",
                 b"filenames": [b"x.png"] * n}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return parent


def epoch_argv(head, mode, data_dir, out, limit_train, epochs=2):
    """train.py flags of one speed run: the paper's CIFAR setting, preact-resnet18, batch 128."""
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--backbone", "preact-resnet18",
            "--head", head, "--loss", "ce", "--noise", "symmetric", "--noise-rate", "0.4",
            "--epochs", str(epochs), "--batch-size", "128", "--limit-train", str(limit_train),
            "--device", "cuda", "--out", out, *MODES[mode]]


def sync_argv(head, data_dir, out, steps):
    """1 epoch of `steps` batches of 128, no per-epoch pass over the training set."""
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--backbone", "preact-resnet18",
            "--head", head, "--loss", "ce", "--noise", "symmetric", "--noise-rate", "0.4",
            "--epochs", "1", "--batch-size", "128", "--limit-train", str(128 * steps),
            "--train-eval-every", "0", "--device", "cuda", "--out", out]


def run_train(argv, env_extra=None, sync_debug=False):
    """Run train.py (optionally under sync debug mode); -> (return code, stderr text)."""
    code = ("import runpy, sys, torch; torch.cuda.set_sync_debug_mode('warn'); "
            "sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')")
    cmd = [sys.executable, "-W", "always", "-c", code, *argv] if sync_debug else \
          [sys.executable, "train.py", *argv]
    env = dict(os.environ, **(env_extra or {}))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def last_epoch(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])


class MdTable:
    """A markdown file written as it is measured: the header lines at once, then each row
    appended and flushed (and echoed to stdout) as soon as it exists, so a part killed by
    its time limit keeps every row it finished."""

    def __init__(self, path, lines, mode="w"):
        self.path = path
        with open(path, mode) as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def add(self, *lines):
        with open(self.path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
        for line in lines:
            print(line, flush=True)


def progress(text):
    print(f"gpu_check: {text}", flush=True)


def epochs_table(path, data_dir, work, limit_train):
    """Markdown at path: seconds of the 2nd epoch (steady state, compile done), samples/s, and on
    each dfc row DFC / FC time per sample (samples/s of FC over DFC in the same mode)."""
    table = MdTable(path, [
        f"### preact-resnet18, synthetic CIFAR-10 ({limit_train} training images, batch 128), epoch 2 of 2", "",
        "DFC / FC: time per sample of DFC over FC in the same mode (samples/s of FC over DFC; 1.0 = DCM costs nothing).", "",
        "| mode | head | s / epoch | samples / s | wall s (2 epochs + start) | DFC / FC |", "|---|---|---|---|---|---|"])
    for mode in MODES:
        per_head = {}
        for head in HEADS:
            out = os.path.join(work, f"ep-{head}-{mode}")
            progress(f"epochs: {mode} {head} ...")
            t0 = time.time()
            rc, log = run_train(epoch_argv(head, mode, data_dir, out, limit_train))
            if rc != 0:
                last = (log.strip().splitlines() or [""])[-1][:120]
                table.add(f"| {mode} | {head} | failed (rc {rc}): {last} | | | |")
                continue
            m = last_epoch(out)
            per_head[head] = m["samples_per_s"]
            ratio = f"{per_head['fc'] / per_head['dfc']:.3f}" if head == "dfc" and "fc" in per_head else ""
            table.add(f"| {mode} | {head} | {m['seconds']:.2f} | {m['samples_per_s']:.0f} | "
                      f"{time.time() - t0:.0f} | {ratio} |")


def syncs_table(path, data_dir, work):
    """Markdown at path: host syncs per training step for fc, dfc and dkan (see the module docstring)."""
    table = MdTable(path, ["### Host syncs per training step (torch.cuda.set_sync_debug_mode)", "",
                           "| head | warnings, 10 steps | warnings, 20 steps | syncs / step |", "|---|---|---|---|"])
    for head in SYNC_HEADS:
        counts = []
        for steps in (10, 20):
            progress(f"syncs: {head}, {steps} steps ...")
            rc, log = run_train(sync_argv(head, data_dir, os.path.join(work, f"sync-{head}-{steps}"), steps),
                                sync_debug=True)
            counts.append(log.count(SYNC_WARNING) if rc == 0 else None)
        per_step = (counts[1] - counts[0]) / 10 if None not in counts else "run failed"
        table.add(f"| {head} | {counts[0]} | {counts[1]} | {per_step} |")


MODULES = ("nn.Linear", "DCMLinear", "DKANLinear")


MODULE_HEADER = ["### Host syncs per step of the drop-in modules (an MLP on 3x32x32, batch 128)", "",
                 "| head module | warnings, 10 steps | warnings, 20 steps | syncs / step |", "|---|---|---|---|"]


def module_syncs_rows(device="cuda"):
    """Rows of the drop-in modules' host syncs per step (see module_syncs_table), one at a time."""
    for name in MODULES:
        counts = [module_step_warnings(name, steps, device) for steps in (10, 20)]
        yield f"| {name} | {counts[0]} | {counts[1]} | {(counts[1] - counts[0]) / 10} |"


def module_syncs_table(device="cuda"):
    """Markdown: host syncs per step of the drop-in modules (dcm_ref.convert / kan.DKANLinear
    + dcm_ref.attach, the path users copy), counted in this process the same way:
    (warnings(20 steps) - warnings(10 steps)) / 10. On CPU every count is 0 (a smoke run)."""
    return "\n".join([*MODULE_HEADER, *module_syncs_rows(device), ""])


def module_step_warnings(name, steps, device):
    """Sync warnings of `steps` SGD steps of nn.Flatten-Linear-ReLU-<head> with the head `name`."""
    import warnings
    sys.path.insert(0, ROOT)
    import torch
    import torch.nn.functional as F
    from torch import nn
    import dcm_ref
    import kan
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    if name == "DKANLinear":
        net[3] = kan.DKANLinear(512, 10, keep=0.1, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    if name == "DCMLinear":
        dcm_ref.convert(net, "3", keep=0.1)
    if name != "nn.Linear":
        dcm_ref.attach(net, opt)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    step = lambda: (opt.zero_grad(set_to_none=True), F.cross_entropy(net(x), y).backward(), opt.step())
    step()   # first step: lazy initialisation, outside the count
    cuda = torch.device(device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    return sum(SYNC_WARNING in str(w.message) for w in caught)


def dry_run():
    """Parse every train.py command this script would run with train.py's own parser."""
    sys.path.insert(0, ROOT)
    import train
    parser = train.build_parser()
    argvs = [epoch_argv(h, m, "D", "O", 25000) for m in MODES for h in HEADS]
    argvs += [sync_argv(h, "D", "O", s) for h in SYNC_HEADS for s in (10, 20)]
    for argv in argvs:
        parser.parse_args(argv)
        print("would run: python train.py " + " ".join(argv))
    print(f"gpu_check.py: {len(argvs)} train.py commands parse")
    print(module_syncs_table("cpu"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("epochs", "syncs", "all"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "gpu_check"), help="folder for the markdown")
    p.add_argument("--limit-train", type=int, default=25000, help="training images of the speed runs (default 25000)")
    p.add_argument("--dry-run", action="store_true", help="check the commands parse; run nothing")
    a = p.parse_args(argv)
    if a.dry_run:
        return dry_run()
    os.makedirs(a.out, exist_ok=True)
    # `timeout` (gpu_check.sh's part limits) sends SIGTERM: leave through SystemExit so the
    # finally blocks run and the synthetic data's temp folder (~264 MB) is removed.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    work = tempfile.mkdtemp(prefix="dcm-gpu-check-")
    try:
        progress(f"writing synthetic CIFAR-10 to {work}")
        data_dir = write_synthetic_cifar10(os.path.join(work, "data"))
        if a.what in ("syncs", "all"):
            path = os.path.join(a.out, "syncs.md")
            syncs_table(path, data_dir, work)
            table = MdTable(path, ["", *MODULE_HEADER], mode="a")
            for line in module_syncs_rows():
                table.add(line)
        if a.what in ("epochs", "all"):
            epochs_table(os.path.join(a.out, "epochs.md"), data_dir, work, a.limit_train)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
