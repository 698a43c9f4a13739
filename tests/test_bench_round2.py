"""Round-two accuracy tables (bench/round2.py) on hand-made pack records, and the GPU
check script's --dry-run (so its commands cannot rot while no GPU is around)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench import accuracy as acc
from bench import pack
from bench import round2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(packed, flags, seed, test, val):
    """A packed finished run (bench/pack.py record) into packed ({key: record}): metrics with
    per-epoch test/val accuracies (fractions); -> the record."""
    run = acc.make_run(dict(flags, seed=seed))
    rows = [dict(epoch=e + 1, test_acc=t, val_acc_noisy=v) for e, (t, v) in enumerate(zip(test, val))]
    packed[run.key] = dict(key=run.key, argv=list(run.argv), packed="2026-12-01T00:00:00Z", config={},
                           final=dict(test_acc_last=test[-1], test_acc_best=max(test)), noise_report=None, metrics=rows)
    assert pack.check_record(packed[run.key]) is None
    return packed[run.key]


def test_val_selected_accuracy_is_the_test_accuracy_at_the_first_val_best_epoch():
    flags = dict(acc.COMMON, noise="symmetric", noise_rate=0.6, loss="ce", head="fc")
    record = write_run({}, flags, 0, test=[0.5, 0.9, 0.7, 0.6], val=[0.2, 0.3, 0.4, 0.4])
    r = round2.load_run(record)
    assert r["valsel"] == pytest.approx(70.0) and r["val"] == pytest.approx(40.0) and r["val_epoch"] == 3
    assert r["best"] == pytest.approx(90.0) and r["last"] == pytest.approx(60.0)


def test_length_table_row_has_means_and_paired_t_of_dfc_minus_fc():
    packed = {}
    rows = round2.settings(acc.COMMON, "training length")
    fc, dfc = rows[("ce", "fc, sym 0.6, 40 ep")], rows[("ce", "dfc, sym 0.6, 40 ep")]
    for seed, (a, b) in enumerate([(0.50, 0.52), (0.60, 0.63), (0.70, 0.71)]):
        write_run(packed, fc, seed, test=[0.8, a], val=[0.3, 0.2])
        write_run(packed, dfc, seed, test=[0.8, b], val=[0.3, 0.2])
    section = round2.section(acc.COMMON, packed, "## T")
    row = next(line for line in section.splitlines() if line.startswith("| ce | sym 0.6 | 40 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "3/3" and cells[4] == "60.00 ± 10.00" and cells[5] == "62.00 ± 9.54"
    # per-seed differences 2, 3, 1 points: mean 2, std 1, t = 2 / (1 / sqrt 3) = 3.46 < 4.30
    assert cells[6] == "+2.00 (t +3.5, no)"
    assert cells[11] == "80.00 ± 0.00" and cells[12].startswith("+0.00")


def test_sweep_picks_the_cell_with_the_best_validation_not_test():
    packed = {}
    rows = round2.settings(acc.COMMON, "keep x interval (40 ep)")
    for seed in acc.SEEDS:   # keep 0.01 / interval 10: best val, worse test; keep 0.1 / 1: the reverse
        write_run(packed, rows[("ce", "keep 0.01, interval 10")], seed, test=[0.60], val=[0.50])
        write_run(packed, rows[("ce", "keep 0.1, interval 1")], seed, test=[0.90], val=[0.40])
    section = round2.section(acc.COMMON, packed, "## T")
    assert "keep 0.01, interval 10: val-sel test 60.00 ± 0.00" in section


def test_cnn_table_compares_dcm_and_kan_heads_at_the_cpu_budget():
    packed = {}
    rows = round2.settings(acc.COMMON, "CNN backbone (cnn8, sym 0.6)")
    assert all(f["backbone"] == "cnn8" and f["limit_train"] == acc.CNN_BUDGET["limit_train"]
               and f["limit_test"] == acc.CNN_BUDGET["limit_test"] for f in rows.values())
    last = {"fc": (0.40, 0.50, 0.60), "dfc": (0.41, 0.52, 0.60), "kan": (0.50, 0.55, 0.75)}
    for head, accs in last.items():
        for seed, t in enumerate(accs):
            write_run(packed, rows[("ce", head)], seed, test=[0.8, t], val=[0.3, 0.2])
    lines = round2.section(acc.COMMON, packed, "## T").splitlines()
    cells = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in lines if line.startswith("| ce | ")}
    assert cells["fc → dfc"][2] == "3/3" and cells["fc → dfc"][5] == "+1.00 (t +1.7, no)"
    # fc → kan per seed +10, +5, +15: mean 10, std 5, t = 3.46
    assert cells["fc → kan"][3] == "50.00 ± 10.00" and cells["fc → kan"][5] == "+10.00 (t +3.5, no)"
    assert cells["kan → dkan"][2] == "3/0" and cells["kan → dkan"][5] == "—"
    assert any("--limit-test 2000" in line for line in lines)


def test_gpu_check_dry_run_parses_every_command():
    p = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "14 train.py commands parse" in p.stdout and "gpu_check.sh --dry-run: ok" in p.stdout
    for module in ("nn.Linear", "DCMLinear", "DKANLinear"):   # the module sync count ran its steps on CPU
        assert f"| {module} | 0 | 0 | 0.0 |" in p.stdout


GPU_CHECK_DRIVER = """import functools, json, os, subprocess, sys
sys.path.insert(0, {repo!r})
from bench import gpu_check as gc
gc.write_synthetic_cifar10 = functools.partial(gc.write_synthetic_cifar10, n_train=50, n_test=10)
calls = []

def fake_run_train(argv, env_extra=None, sync_debug=False):   # train.py's metrics.jsonl, or a hang on the 3rd run
    calls.append(argv)
    out = argv[argv.index("--out") + 1]
    if len(calls) == 3:
        open({started!r}, "w").close()
        p = subprocess.run([sys.executable, "-c", "import time; time.sleep(120)"], capture_output=True)
        return p.returncode, ""
    os.makedirs(out)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(dict(epoch=2, seconds=2.0, samples_per_s=1000.0 * len(calls))) + "\\n")
    return 0, ""
gc.run_train = fake_run_train
sys.exit(gc.main(["epochs", "--out", {out!r}]))
"""


def test_gpu_check_part_killed_by_its_time_limit_keeps_finished_rows_and_removes_its_temp_data(tmp_path):
    """timeout sends SIGTERM mid-run: the rows measured before stay in epochs.md, the synthetic
    data folder is removed, and the progress lines reached stdout."""
    tmp, out, started = tmp_path / "tmp", tmp_path / "out", tmp_path / "started"
    tmp.mkdir()
    driver = GPU_CHECK_DRIVER.format(repo=ROOT, started=str(started), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, TMPDIR=str(tmp)))
    deadline = time.time() + 60
    while not started.exists():   # two runs measured, the third one hangs
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    assert list(tmp.iterdir())                      # the synthetic data is there while it runs
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, log
    rows = [line for line in (out / "epochs.md").read_text().splitlines() if line.startswith("| eager")]
    assert rows == ["| eager | fc | 2.00 | 1000 | 0 |  |", "| eager | dfc | 2.00 | 2000 | 0 | 0.500 |"]
    assert not list(tmp.iterdir()), "the synthetic-data temp folder was left behind"
    assert "gpu_check: epochs: amp fc ..." in log and "| eager | dfc |" in log and "Traceback" not in log


def test_gpu_check_part_limits_fit_the_time_it_claims():
    text = open(os.path.join(ROOT, "bench", "gpu_check.sh")).read()
    limits = [int(line.split()[2]) for line in text.splitlines() if line.startswith("part ")]
    claim = int(re.search(r"< (\d+) min", text).group(1))
    assert len(limits) == 4 and sum(limits) <= 60 * claim


def test_cnn_table_without_a_cpu_budget_as_on_a_gpu(monkeypatch):
    """README: on a GPU, empty CNN_BUDGET and rerun --grid cnn; the section then says so (no KeyError)."""
    name = "CNN backbone (cnn8, sym 0.6)"
    losses, base, rows = acc.ROUND2[name]
    base = {k: v for k, v in base.items() if k not in acc.CNN_BUDGET}
    monkeypatch.setattr(acc, "CNN_BUDGET", {})
    monkeypatch.setattr(acc, "ROUND2", {**acc.ROUND2, name: (losses, base, rows)})
    common = dict(acc.COMMON, epochs=30)
    flags, packed = round2.settings(common, name), {}
    assert "limit_test" not in flags[("ce", "fc")] and flags[("ce", "fc")]["limit_train"] == common["limit_train"]
    for seed in acc.SEEDS:
        write_run(packed, flags[("ce", "fc")], seed, test=[0.8, 0.5], val=[0.3, 0.2])
    text = round2.section(common, packed, "## T")
    assert f"--limit-train {common['limit_train']} (0 = all; 10 % of it the noisy validation split), 30 epochs" in text
    assert "15 epochs" not in text and "--limit-test" not in text and "at a CPU budget" not in text
    assert "| ce | fc → dfc | 3/0 | 50.00 ± 0.00 |" in text
