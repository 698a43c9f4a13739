"""train.py as a user meets it: one run per folder, checkpoints verified on resume,
--resume/--extend/--auto-resume, SIGTERM, a full disk, a closed stdout, validation-
selected accuracy, and every user mistake as one line on stderr with nothing written.

Subprocesses where the process is the point (signals, pipes, file-size limits, a second
process); train.main in-process otherwise, to keep the suite fast."""
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import data
import diagnostics
import runfolder
import train
import train_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--limit-train", "300", "--epochs", "2", "--batch-size", "64"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, **kw)


def popen(*args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, text=True, **kw)


def one_line(stderr):
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


def rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_in(capsys, *argv):
    """train.main in-process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = train.main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run (do not modify: copy it)."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    assert train.main(QUICK + ["--epochs", "1", "--out", out]) == 0
    return out


def copy_run(src, dst):
    os.makedirs(dst)
    for name, blob in listing(src).items():
        with open(os.path.join(dst, name), "wb") as f:
            f.write(blob)
    return dst


# ----------------------------------------------------------------------------- One run per folder

def wait_for(proc, text):
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"the run ended before printing {text!r}: rc {proc.wait()}, {proc.stderr.read()}")


def test_second_run_is_refused_and_sigterm_stops_resumably(tmp_path):
    """A: a long run. B on A's folder: one line naming A's pid, A's files untouched.
    SIGTERM to A: it saves and exits like Ctrl-C; --auto-resume continues it."""
    out = str(tmp_path / "run")
    flags = ["--limit-train", "300", "--batch-size", "64", "--epochs", "200", "--out", out]
    a = popen(*flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(a, "epoch   1/200")
        b = cli(*flags)
        assert b.returncode == 2
        assert f"pid {a.pid} " in one_line(b.stderr) and "in use" in b.stderr
        a.send_signal(signal.SIGTERM)
        _, err = a.communicate(timeout=120)
    finally:
        a.kill()
    assert a.returncode == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM)" in one_line(err) and "--resume" in err
    ck, verified = checkpoint.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    done = ck["epoch"]
    assert verified and done >= 1 and [r["epoch"] for r in rows(out)] == list(range(1, done + 1))
    assert not os.path.exists(os.path.join(out, checkpoint.LOCK_NAME))   # released on exit
    r = cli(*flags, "--auto-resume", "--stop-after", str(done + 1))
    assert r.returncode == 0, r.stderr
    assert [row["epoch"] for row in rows(out)] == list(range(1, done + 2))


def test_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / checkpoint.LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
    rc, _, err = run_in(capsys, *QUICK, "--epochs", "1", "--out", str(out))
    assert rc == 0 and f"pid {dead.pid}" in one_line(err) and "no longer running" in err
    assert not (out / checkpoint.LOCK_NAME).exists()


def test_default_names_keep_a_sweep_apart(tmp_path, monkeypatch, capsys):
    """Three --keep values and a repeat: four folders, none shared (the name carries every
    non-default flag); no flags at all still gives runs/<dataset>-<head>-<loss>-<noise><rate>-s<seed>."""
    monkeypatch.chdir(tmp_path)
    made = []
    for keep in ("0.05", "0.2", "0.5", "0.5"):
        rc, out, _ = run_in(capsys, *QUICK, "--epochs", "1", "--keep", keep)
        assert rc == 0
        made.append(out.strip().splitlines()[-1].split(" -> ")[-1])
    name = "runs/digits-dfc-ce-symmetric0.4-s0-n300-keep{}-bs64-ep1"   # flags in --help order
    assert made == [name.format("0.05"), name.format("0.2"), name.format("0.5"), name.format("0.5") + "-2"]
    for folder, keep in zip(made, (0.05, 0.2, 0.5, 0.5)):
        assert json.load(open(os.path.join(folder, "config.json")))["keep"] == keep
    assert runfolder.default_out(train.build_parser().parse_args([]), vars(train.build_parser().parse_args([]))) == "runs/digits-dfc-ce-symmetric0.4-s0"


def test_failed_overwrite_restores_the_old_run_and_a_finished_one_replaces_it(tmp_path, capsys, finished):
    out = copy_run(finished, str(tmp_path / "run"))
    before = listing(out)
    rc, _, err = run_in(capsys, *QUICK, "--out", out, "--overwrite", "--lr", "1e30", "--grad-clip", "0")
    assert rc == 3 and "non-finite" in one_line(err)
    assert listing(out) == before
    rc, _, _ = run_in(capsys, *QUICK, "--out", out, "--overwrite")
    assert rc == 0 and len(rows(out)) == 2 and not os.path.exists(os.path.join(out, checkpoint.REPLACED))


# ----------------------------------------------------------------------------- Checkpoint integrity

@pytest.mark.parametrize("damage", ["zero-4k", "random"])
def test_damaged_checkpoint_is_one_line_on_resume_and_nothing_is_written(tmp_path, damage):
    out = str(tmp_path / "run")
    assert train.main(QUICK + ["--epochs", "3", "--stop-after", "1", "--out", out]) == 0
    path = os.path.join(out, "checkpoint.pt")
    if damage == "zero-4k":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(bytes(4096))
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(os.path.getsize(path)))
    before = listing(out)
    r = cli("--out", out, "--resume")
    assert r.returncode == 2 and "corrupt" in one_line(r.stderr)
    assert listing(out) == before


def test_disk_full_at_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path):
    """A file-size limit makes the epoch-2 checkpoint write fail (EFBIG), as a full disk would."""
    out = str(tmp_path / "run")
    assert train.main(QUICK + ["--epochs", "3", "--stop-after", "1", "--out", out]) == 0
    size = os.path.getsize(os.path.join(out, "checkpoint.pt"))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
    r = cli("--out", out, "--resume", preexec_fn=limit)
    assert r.returncode == 2
    assert "cannot write" in one_line(r.stderr) and "intact" in r.stderr
    ck, verified = checkpoint.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert verified and ck["epoch"] == 1
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    assert train.main(["--out", out, "--resume"]) == 0 and len(rows(out)) == 3   # and it resumes


# ----------------------------------------------------------------------------- --resume, --extend, --auto-resume

def test_resume_of_a_finished_run_needs_extend(tmp_path, capsys, finished):
    out = copy_run(finished, str(tmp_path / "run"))
    before = listing(out)
    for argv, needle in ((["--resume"], "already finished"), (["--resume", "--epochs", "2"], "--extend"),
                         (["--resume", "--extend", "--epochs", "1"], "must exceed")):
        rc, _, err = run_in(capsys, "--out", out, *argv)
        assert rc == 2 and needle in one_line(err)
        assert listing(out) == before
    rc, _, _ = run_in(capsys, "--out", out, "--resume", "--extend", "--epochs", "3")
    assert rc == 0 and [r["epoch"] for r in rows(out)] == [1, 2, 3]
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["extended"] == [{"at_epoch": 1, "epochs_before": 1, "epochs_after": 3}]
    assert cfg["epochs"] == 3 and cfg["lr"] == 0.05 and len(cfg["resumed"]) == 1
    assert json.load(open(os.path.join(out, "final.json")))["epochs"] == 3


def test_resume_with_another_epochs_is_refused_unless_extend(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(QUICK + ["--epochs", "3", "--stop-after", "1", "--out", out]) == 0
    before = listing(out)
    rc, _, err = run_in(capsys, "--out", out, "--resume", "--epochs", "2")
    assert rc == 2 and "--extend" in one_line(err) and listing(out) == before
    rc, _, _ = run_in(capsys, "--out", out, "--resume")   # no --epochs: the run's own 3
    assert rc == 0 and len(rows(out)) == 3


def test_auto_resume_starts_resumes_finishes_and_refuses_another_config(tmp_path, capsys):
    out = str(tmp_path / "run")
    cmd = QUICK + ["--epochs", "3", "--out", out, "--auto-resume"]
    assert run_in(capsys, *cmd, "--stop-after", "1")[0] == 0 and len(rows(out)) == 1   # fresh
    assert run_in(capsys, *cmd)[0] == 0 and len(rows(out)) == 3                         # resumed
    before = listing(out)
    rc, stdout, _ = run_in(capsys, *cmd)
    assert rc == 0 and "nothing to do" in stdout and listing(out) == before             # finished
    rc, _, err = run_in(capsys, *cmd, "--keep", "0.3")
    assert rc == 2 and "--keep 0.1" in one_line(err) and listing(out) == before


# ----------------------------------------------------------------------------- Output

def test_closed_stdout_does_not_stop_the_run_or_its_files(tmp_path):
    """`train.py | head -1`: the run goes on silently and finishes its files."""
    out = str(tmp_path / "run")
    p = popen(*QUICK, "--epochs", "4", "--out", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0
    assert "broken pipe" in one_line(err)
    assert len(rows(out)) == 4 and os.path.exists(os.path.join(out, "final.json"))


def test_val_selected_accuracy_is_reported(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc, stdout, _ = run_in(capsys, *QUICK, "--epochs", "4", "--val-frac", "0.2", "--out", out)
    assert rc == 0 and "val(noisy)" in stdout.splitlines()[1]
    final, hist = json.load(open(os.path.join(out, "final.json"))), rows(out)
    pick = max(hist, key=lambda r: (r["val_acc_noisy"], -r["epoch"]))   # the first epoch of the best val acc
    assert final["val_best_epoch"] == pick["epoch"] and final["test_acc_at_val_best"] == pick["test_acc"]
    assert final["val_acc_best"] == pick["val_acc_noisy"]
    plain = str(tmp_path / "plain")
    assert run_in(capsys, *QUICK, "--epochs", "1", "--out", plain)[0] == 0
    assert "val_best_epoch" not in json.load(open(os.path.join(plain, "final.json")))


def test_validation_selects_its_own_epoch_not_the_test_best():
    best = {"acc": -1.0, "epoch": 0}
    for epoch, val, test in ((1, .30, .60), (2, .50, .50), (3, .40, .70), (4, .50, .65)):
        best = diagnostics.update_best(best, {"epoch": epoch, "val_acc_noisy": val, "test_acc": test})
    assert (best["epoch"], best["acc"]) == (3, .70)                                    # chosen on the test set
    assert (best["val_epoch"], best["val_acc"], best["test_at_val"]) == (2, .50, .50)  # first epoch of the best val


def test_compile_runs_one_epoch_on_cpu(tmp_path, capsys):
    """No skip: torch's CPU compiler (inductor + the C compiler) works on every machine this
    project tests on, so a failure here is a --compile bug (it crashed before, on a truth
    test of the compiled module), not a missing toolchain."""
    out = str(tmp_path / "run")
    rc, _, err = run_in(capsys, *QUICK, "--epochs", "1", "--compile", "--out", out)
    assert rc == 0, err
    assert rows(out)[0]["test_acc"] > 0.1 and torch.isfinite(torch.tensor(rows(out)[0]["train_loss"]))


# ----------------------------------------------------------------------------- User mistakes

@pytest.fixture
def no_data(monkeypatch):
    """Flag errors must come before the data is loaded."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the data was loaded before the flags were checked")
    monkeypatch.setattr(data, "prepare_training_data", forbidden)


@pytest.mark.parametrize("args, needle", [
    (["--kan-grid", "0", "--head", "kan"], "--kan-grid"),
    (["--kan-order", "-1", "--head", "kan"], "--kan-order"),
    (["--forget-rate", "1.5", "--method", "coteaching"], "--forget-rate"),
    (["--momentum", "-1"], "--momentum"),
    (["--limit-test", "-1"], "--limit-test"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "-1"], "--threads"),
    (["--stop-after", "-1"], "--stop-after"),
    (["--resume", "--overwrite"], "--overwrite"),
    (["--extend", "--epochs", "5"], "--extend"),
    (["--auto-resume", "--resume"], "--auto-resume"),
])
def test_flag_mistakes_are_one_line_before_the_data_and_write_nothing(tmp_path, capsys, no_data, args, needle):
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "x"), *args)
    assert rc == 2 and needle in one_line(err)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, needle", [
    (["--val-frac", "0.999"], "--val-frac"),
    (["--limit-train", "5"], "--limit-train"),
])
def test_data_size_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, args, needle):
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "x"), *args)
    assert rc == 2 and needle in one_line(err)
    assert os.listdir(tmp_path) == []


def test_unusable_out_is_one_line_and_touches_nothing(tmp_path):
    (tmp_path / "file").write_text("keep me")
    for out, needle in ((tmp_path / "file", "not a folder"), (tmp_path / "file" / "run", "is a file")):
        r = cli("--out", str(out), *QUICK)
        assert r.returncode == 2 and needle in one_line(r.stderr)
    assert (tmp_path / "file").read_text() == "keep me"


def test_read_only_out_is_one_line(tmp_path, capsys, no_data, monkeypatch):
    """Root ignores permissions, so the refused lock-file creation is simulated."""
    real = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(checkpoint.LOCK_NAME):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    (tmp_path / "ro").mkdir()
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "ro"))
    assert rc == 2 and "Permission denied" in one_line(err) and os.listdir(tmp_path / "ro") == []


@pytest.mark.parametrize("args, needle", [
    (["--head", "fc", "--keep", "0.3"], "--keep has no effect"),
    (["--head", "dfc", "--kan-grid", "7"], "--kan-grid has no effect"),
    (["--forget-rate", "0.2"], "--forget-rate has no effect"),
    (["--noise", "none", "--noise-rate", "0.2"], "--noise-rate has no effect"),
    (["--batch-size", "512"], "--batch-size 512 exceeds"),
    (["--limit-train", "5000"], "--limit-train 5000 exceeds"),
])
def test_degenerate_settings_warn_in_one_line(tmp_path, capsys, args, needle):
    argv = ["--limit-train", "300", "--epochs", "1", "--out", str(tmp_path / "x")] + args
    rc, _, err = run_in(capsys, *argv)
    assert rc == 0 and needle in one_line(err) and err.startswith("train.py: warning:")


@pytest.mark.parametrize("head, ok", [("fc", False), ("dfc", True), ("kan", False), ("dkan", True)])
def test_save_masks_is_accepted_with_a_dcm_head_only(head, ok):
    args = train.build_parser().parse_args(["--head", head, "--save-masks"])
    if ok:
        train_cli.check_args(args)
    else:
        with pytest.raises(train_cli.UserError, match=f"--save-masks needs a DCM head .* got --head {head}$"):
            train_cli.check_args(args)
