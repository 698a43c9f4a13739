"""train.py as a user meets it, end to end through train.main: one run per folder,
checkpoints verified on resume, SIGTERM, a full disk, a closed stdout, validation-selected
accuracy, the exit code of each error kind, and every user mistake as one line on stderr
with nothing written. The policies behind them are tested directly in test_train_cli.py
(flags, device, output, signals) and test_runfolder.py (resume, extend, checkpoints).

Subprocesses where the process is the point (signals, pipes, file-size limits, a second
process, the exit status of a real `python train.py`); train.main in-process otherwise."""
import json
import os
import resource
import signal
import time
import socket
import subprocess

import pytest
import torch

import checkpoint
import data
import diagnostics
import distributed
import train
import train_cli
from conftest import QUICK, cli, copy_run, listing, one_line, popen, rows, run_in


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
        assert f"(pid {a.pid} on host {socket.gethostname()}, " in one_line(b.stderr) and "in use" in b.stderr
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


def test_failed_overwrite_restores_the_old_run_and_a_finished_one_replaces_it(tmp_path, capsys, finished):
    out = copy_run(finished, str(tmp_path / "run"))
    before = listing(out)
    rc, _, err = run_in(capsys, *QUICK, "--out", out, "--overwrite", "--lr", "1e30", "--grad-clip", "0")
    assert rc == 3 and "non-finite" in one_line(err)
    assert listing(out) == before
    rc, _, _ = run_in(capsys, *QUICK, "--out", out, "--overwrite")
    assert rc == 0 and len(rows(out)) == 2 and not os.path.exists(os.path.join(out, checkpoint.REPLACED))


@pytest.mark.parametrize("then", [[], ["--auto-resume"], ["--resume"]])
def test_a_run_set_aside_by_a_killed_overwrite_is_never_lost(tmp_path, capsys, finished, then):
    """--overwrite killed between moving the old run into DIR/replaced/ and its own first
    checkpoint: DIR holds only replaced/. A later run without --overwrite puts the old run back
    (a plain run is then refused as "already holds a run", a resume finds it finished); it never
    trains over it and deletes replaced/ (that lost a finished run)."""
    out = copy_run(finished, str(tmp_path / "run"))
    before = listing(out)
    checkpoint.set_aside(out)                            # the state the kill leaves
    rc, _, err = run_in(capsys, *QUICK, "--out", out, *then)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2 and "Traceback" not in err, err   # the warning, then why it stops
    assert lines[0].endswith(f"it is back in {out}") and listing(out) == before


def test_a_default_name_run_skips_a_folder_holding_only_a_set_aside_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = os.path.join("runs", "x")
    os.makedirs(os.path.join(base, checkpoint.REPLACED))
    out, lock = checkpoint.claim_run_dir(base, fresh=True)
    checkpoint.unlock_run(lock)
    assert out == base + "-2"


def test_after_a_non_finite_loss_resume_may_lower_the_lr_and_records_it(tmp_path, capsys):
    """The non-finite line says how to go on; that --resume --lr X is accepted (only after a
    non-finite stop), continues from the last good checkpoint and is recorded in config.json."""
    out = str(tmp_path / "run")
    rc, _, err = run_in(capsys, *QUICK, "--epochs", "3", "--out", out, "--lr", "1e30", "--grad-clip", "0")
    assert rc == 3 and "continue it with --resume and a lower --lr" in one_line(err)
    rc, _, err = run_in(capsys, "--out", out, "--resume", "--lr", "0.05", "--grad-clip", "5")
    assert rc == 0, err
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["lr"] == 0.05 and cfg["retuned"] == [{"at_epoch": 0, "grad_clip": {"before": 0.0, "after": 5.0},
                                                     "lr": {"before": 1e30, "after": 0.05}}]
    assert len(rows(out)) == 3 and not os.path.exists(os.path.join(out, checkpoint.NONFINITE))


def test_without_a_non_finite_stop_resume_still_refuses_another_lr(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_in(capsys, *QUICK, "--epochs", "3", "--stop-after", "1", "--out", out)[0] == 0
    rc, _, err = run_in(capsys, "--out", out, "--resume", "--lr", "0.01")
    assert rc == 2 and "--lr 0.05" in one_line(err)


# ----------------------------------------------------------------------------- Checkpoint integrity

@pytest.mark.parametrize("damage", ["zero-4k", "random"])
def test_damaged_checkpoint_is_one_line_on_resume_and_nothing_is_written(tmp_path, capsys, damage):
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
    rc, _, err = run_in(capsys, "--out", out, "--resume")
    assert rc == 2 and one_line(err).count("corrupt") == 1
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


def test_closed_stdout_and_stderr_do_not_stop_the_run_or_its_files(tmp_path):
    """`train.py 2>&1 | head -1`: both streams are one closed pipe; the warning about the closed
    stdout cannot be written either, and the run still goes on silently and finishes its files."""
    out = str(tmp_path / "run")
    p = popen(*QUICK, "--epochs", "4", "--out", out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.readline()
    p.stdout.close()
    assert p.wait(timeout=300) == 0
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

def test_a_real_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    r = cli("--out", str(tmp_path / "x"), "--keep", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--keep" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "imagenet"], "--dataset"),
    (["--head", "conv"], "--head"),
    (["--loss", "nope"], "--loss"),
    (["--backbone", "vgg"], "--backbone"),
    (["--method", "mixup"], "--method"),
    (["--noise-rate", "1.0"], "--noise-rate"),
    (["--keep", "0"], "--keep"),
    (["--keep", "1.5"], "--keep"),
    (["--epochs", "0"], "--epochs"),
    (["--noise", "asymmetric", "--dataset", "cifar100n", "--noise-rate", "0.2"], "--noise none"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--loss-arg", "q"], "--loss-arg"),
    (["--loss", "gce", "--loss-arg", "zeta=1"], "zeta"),
    (["--loss", "anl_ce", "--loss-arg", "delta=-1"], "delta"),
    (["--loss", "gce", "--loss-arg", "q=2"], "q"),
    (["--resume"], "checkpoint"),
    (["--train-eval-every", "-1"], "--train-eval-every"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys, args, needle):
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "x"), *args)
    assert rc != 0 and needle in one_line(err)


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


def test_unusable_out_is_one_line_and_touches_nothing(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    for out, needle in ((tmp_path / "file", "not a folder"), (tmp_path / "file" / "run", "is a file")):
        rc, _, err = run_in(capsys, "--out", str(out), *QUICK)
        assert rc == 2 and needle in one_line(err)
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


def test_empty_data_dir_names_the_expected_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "x"), "--dataset", "fashion-mnist", "--data-dir", str(empty))
    assert rc != 0 and "train-images-idx3-ubyte" in one_line(err)




@pytest.mark.parametrize("error, code, line", [
    (train_cli.UserError("--keep must be in (0, 1], got 0"), 2, "train.py: error: --keep must be in (0, 1], got 0"),
    (train_cli.NonFiniteLoss("non-finite training loss at step 7"), 3, "train.py: error: non-finite training loss at step 7"),
    (train_cli.PeerFailed(), 2, None),                       # the failing rank has printed why
    (distributed.PeerLost("another rank stopped; see its message (a collective failed: Connection closed by peer)"), 2,
     "train.py: error: another rank stopped; see its message (a collective failed: Connection closed by peer)"),
    (KeyboardInterrupt(), 130, "train.py: interrupted; the last finished epoch's checkpoint (if any) is kept"),
])
def test_each_error_kind_has_its_exit_code_and_at_most_one_line(capsys, monkeypatch, error, code, line):
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(train, "train", fail)
    rc, out, err = run_in(capsys)
    assert rc == code and out == ""
    assert (one_line(err) if line else err) == (line or "")


def test_a_huge_thread_count_is_one_line_not_a_crash():
    """torch.set_num_threads(100000) kills the process (segfault) before any message, so
    main must check --threads before setting it (a real process: a crash is the bug)."""
    p = cli("--threads", "100000", "--epochs", "1")
    assert p.returncode == 2 and "--threads must be in [0, 1024]" in one_line(p.stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_train_py_imports_is_one_line_and_128_plus_it(tmp_path, sig):
    """SIGINT / SIGTERM in the first seconds (torch still importing): one line, exit 130 / 143, no
    traceback, no run folder (were a 30-40-line KeyboardInterrupt traceback / a silent -15)."""
    out = str(tmp_path / "run")
    p = popen(*QUICK, "--out", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)   # past the interpreter's start; torch takes seconds to import (if it was faster, the
    p.send_signal(sig)   # run's own stop handling answers: one line and 128 + the signal as well)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig and "interrupted" in one_line(err)
    assert "while starting" not in err or not os.path.exists(out)
