"""runfolder.py: which folder a run takes (claim, lock, default names), when it may resume,
extend or overwrite, what its checkpoint holds (checkpoint_state / restore_state) and what
its config.json records. First through train.main as a user meets it, then the functions
themselves on hand-made run folders (tmp_path): the policy as a table, the checkpoint round
trip, and the records. Functions are called positionally."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import distributed
import runfolder
import train
import train_cli
from conftest import QUICK, copy_run, listing, new_run, noisy_labels, one_line, rows, run_in

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- Through train.main: the policy as a user meets it

def stale_lock(out):
    """Make folder out, locked by a process that has exited -> that process (its pid is in the lock)."""
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / checkpoint.LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
    return dead


def test_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    dead = stale_lock(out)
    rc, _, err = run_in(capsys, *QUICK, "--epochs", "1", "--out", str(out))
    assert rc == 0 and f"pid {dead.pid}" in one_line(err) and "no longer running" in err
    assert not (out / checkpoint.LOCK_NAME).exists()


def test_default_names_keep_a_sweep_apart(tmp_path, monkeypatch, capsys):
    """Three --keep values and a repeat: four folders, none shared (the name carries every
    non-default flag): the first free runs/<name>[-k] of claim_out."""
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


def test_auto_resume_of_a_finished_run_rewrites_a_damaged_metrics_file_from_its_checkpoint(tmp_path, capsys):
    """A finished run whose metrics.jsonl was cut (a disk that filled, a bad copy): --auto-resume
    says nothing is left to train, and puts the file back from the checkpoint with one warning."""
    out = str(tmp_path / "run")
    cmd = QUICK + ["--epochs", "2", "--out", out, "--auto-resume"]
    assert run_in(capsys, *cmd)[0] == 0
    path = os.path.join(out, "metrics.jsonl")
    good = open(path).read()
    open(path, "w").write(good[:len(good) // 2 + 7])            # ends inside a row
    rc, stdout, err = run_in(capsys, *cmd)
    assert rc == 0 and "nothing to do" in stdout and "rewritten" in one_line(err)
    assert open(path).read() == good


def test_a_hand_edited_config_json_is_said_on_resume_and_written_back(tmp_path, capsys):
    """config.json is the record, the checkpoint the truth: a flag edited in config.json does not
    change the resumed run; one warning says so and the record gets the run's value back."""
    out = str(tmp_path / "run")
    assert run_in(capsys, *QUICK, "--epochs", "2", "--stop-after", "1", "--out", out)[0] == 0
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    json.dump(dict(cfg, lr=0.5), open(path, "w"))
    rc, _, err = run_in(capsys, "--out", out, "--resume")
    assert rc == 0 and "config.json differs from the run's checkpoint in --lr 0.5 (the run's: 0.05)" in one_line(err)
    assert json.load(open(path))["lr"] == 0.05 and rows(out)[-1]["lr"] < 0.05


def test_existing_run_is_never_overwritten(tmp_path, capsys, finished):
    out = copy_run(finished, str(tmp_path / "run"))
    before = listing(out)
    rc, _, err = run_in(capsys, "--out", out, *QUICK)
    assert rc != 0 and "--resume" in one_line(err)
    assert listing(out) == before


def test_resume_with_contradicting_flags_is_refused(tmp_path, capsys, finished):
    out = copy_run(finished, str(tmp_path / "run"))   # a --head dfc run
    rc, _, err = run_in(capsys, "--out", out, "--resume", "--epochs", "2", "--head", "fc")
    assert rc != 0 and "--head" in one_line(err)




# ----------------------------------------------------------------------------- open_run: the policy as a table

def parse(argv):
    """-> (args, typed flags) as train.main builds them."""
    return train.build_parser().parse_args(argv), train_cli.explicit_flags(train.build_parser(), argv)


def open_with(argv, rank=0):
    """runfolder.open_run as runfolder.Session.open calls it -> (the run's flags as args: a resumed run's
    saved ones, (out, lock, checkpoint)). rank > 0: a rank of a 2-rank job, whose broadcast from rank 0
    the caller replaces (rank0_sends)."""
    a, typed = parse(argv)
    dd = distributed.Dist(rank, 2, rank) if rank else distributed.Dist()
    out, lock, ck, config = runfolder.open_run(vars(a), typed, train_cli.defaults(), CPU, dd)
    return argparse.Namespace(**config), (out, lock, ck)


def rank0_sends(monkeypatch, value):
    """distributed.from_rank0 as a rank > 0 sees it when rank 0 sent value; -> the list of the values
    passed to it (what this rank would have sent, were it rank 0)."""
    calls = []
    monkeypatch.setattr(distributed, "from_rank0", lambda obj, dd: (calls.append(obj), value if dd.rank else obj)[1])
    return calls


def fake_run(folder, done, epochs=3, *flags):
    """A run folder whose verified checkpoint says: `done` of `epochs` epochs of QUICK + flags.
    Only what the policy reads is real (the saved config and epoch); no training."""
    a, _ = parse(QUICK + ["--epochs", str(epochs), *flags])
    os.makedirs(folder, exist_ok=True)
    checkpoint.save_checkpoint(os.path.join(folder, "checkpoint.pt"), {"config": vars(a), "epoch": done})
    if done >= epochs:   # a finished run has its final.json
        checkpoint.write_json(os.path.join(folder, "final.json"), {"test_acc_last": 0.5})


def test_a_finished_run_whose_checkpoint_was_deleted_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(QUICK + ["--out", out, "--epochs", "1"]) == 0
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        os.remove(os.path.join(out, name))
    final = open(os.path.join(out, "final.json")).read()
    assert train.main(QUICK + ["--out", out, "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert open(os.path.join(out, "final.json")).read() == final


@pytest.mark.parametrize("how", ["--resume", "--auto-resume"])
def test_a_run_killed_between_its_last_checkpoint_and_final_json_can_be_finished(tmp_path, how):
    """The last checkpoint is written before metrics.jsonl and final.json: a kill (or a full
    disk) in between left a run that --resume called finished and --auto-resume skipped."""
    out = str(tmp_path / "run")
    assert train.main(QUICK + ["--out", out, "--epochs", "2"]) == 0
    final, rows = json.load(open(os.path.join(out, "final.json"))), open(os.path.join(out, "metrics.jsonl")).read()
    os.remove(os.path.join(out, "final.json"))
    checkpoint.write_text(os.path.join(out, "metrics.jsonl"), rows.splitlines(keepends=True)[0])
    assert train.main(QUICK + ["--out", out, "--epochs", "2", how]) == 0
    again = json.load(open(os.path.join(out, "final.json")))
    assert {k: v for k, v in again.items() if k != "finished"} == {k: v for k, v in final.items() if k != "finished"}
    assert open(os.path.join(out, "metrics.jsonl")).read() == rows


FOLDERS = {"absent": None, "empty": -1, "unfinished": 1, "finished": 3}

POLICY = [   # folder, flags, outcome: "new", ("resume", epoch, epochs) or an error's words
    ("absent", [], "new"),
    ("empty", [], "new"),
    ("unfinished", [], "already holds a run"),
    ("finished", [], "already holds a run"),
    ("unfinished", ["--overwrite"], "new"),
    ("finished", ["--overwrite"], "new"),
    ("absent", ["--resume"], "no checkpoint"),
    ("empty", ["--resume"], "no checkpoint"),
    ("unfinished", ["--resume"], ("resume", 1, 3)),
    ("unfinished", ["--resume", "--lr", "0.05"], ("resume", 1, 3)),        # typed, but the saved value
    ("unfinished", ["--resume", "--head", "fc"], "contradict the saved run"),
    ("unfinished", ["--resume", "--epochs", "5"], "add --extend"),
    ("unfinished", ["--resume", "--extend", "--epochs", "5"], ("resume", 1, 5)),
    ("finished", ["--resume"], "already finished"),
    ("finished", ["--resume", "--epochs", "5"], "add --extend"),
    ("finished", ["--resume", "--extend", "--epochs", "3"], "must exceed"),
    ("finished", ["--resume", "--extend", "--epochs", "2"], "must exceed"),
    ("finished", ["--resume", "--extend", "--epochs", "5"], ("resume", 3, 5)),
    ("absent", ["--auto-resume"], "new"),
    ("empty", ["--auto-resume"], "new"),
    ("unfinished", ["--auto-resume"], ("resume", 1, 3)),
    ("finished", ["--auto-resume"], ("resume", 3, 3)),                       # Session.begin: nothing to do
    ("unfinished", ["--auto-resume", "--keep", "0.3"], "--keep 0.1"),
    ("unfinished", ["--auto-resume", "--epochs", "5"], "--epochs 3"),
]


@pytest.mark.parametrize("folder, flags, outcome", POLICY)
@pytest.mark.parametrize("locked", [False, True])
def test_open_run_policy(tmp_path, folder, flags, outcome, locked):
    """Each folder state x flags -> a new run, a resumed checkpoint, or one UserError line; a
    folder held by a running train.py is refused whatever the flags. A refusal leaves the
    folder exactly as it was (no lock file, no folder created); a success holds the lock."""
    out = str(tmp_path / "run")
    if FOLDERS[folder] == -1:
        os.makedirs(out)
    elif FOLDERS[folder] is not None:
        fake_run(out, FOLDERS[folder])
    held = checkpoint.lock_run(out) if locked else None
    before = listing(out) if os.path.isdir(out) else None
    try:
        if locked or isinstance(outcome, str) and outcome != "new":
            with pytest.raises(train_cli.UserError) as e:
                open_with(QUICK + ["--epochs", "3", "--out", out] + flags)
            assert "\n" not in str(e.value) and ("in use" if locked else outcome) in str(e.value)
            assert (listing(out) if os.path.isdir(out) else None) == before
            return
        a, (got, lock, ck) = open_with(QUICK + ["--epochs", "3", "--out", out] + flags)
        assert got == out and lock is not None and os.path.exists(os.path.join(out, checkpoint.LOCK_NAME))
        checkpoint.unlock_run(lock)
        if outcome == "new":
            assert ck is None
        else:
            assert (outcome[0], ck["epoch"], a.epochs) == outcome
    finally:
        if held is not None:
            checkpoint.unlock_run(held)


def test_resume_takes_the_saved_flags_and_keeps_the_typed_same_ones(tmp_path):
    out = str(tmp_path / "run")
    fake_run(out, 1, 3, "--keep", "0.3", "--head", "dkan", "--kan-grid", "7")
    a, (_, lock, _) = open_with(["--out", out, "--resume", "--kan-grid", "7"])
    checkpoint.unlock_run(lock)
    assert (a.keep, a.head, a.kan_grid, a.epochs, a.limit_train) == (0.3, "dkan", 7, 3, 300)


def test_other_ranks_take_no_lock(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    fake_run(out, 1)
    rank0_sends(monkeypatch, out)
    _, (got, lock, ck) = open_with(["--out", out, "--resume"], rank=1)
    assert got == out and lock is None and ck["epoch"] == 1
    assert not os.path.exists(os.path.join(out, checkpoint.LOCK_NAME))


def test_other_ranks_take_the_folder_rank0_claimed(tmp_path, monkeypatch):
    """Under a default name rank 0 may claim runs/<name>-2 (runs/<name> holds a run): the other
    ranks take that folder, not the default name they would compute (which holds a run)."""
    monkeypatch.chdir(tmp_path)
    a, _ = parse(QUICK)
    base = runfolder.default_out(vars(a), train_cli.defaults())
    fake_run(base, 2, 2)
    _, (claimed, lock, _) = open_with(QUICK)       # rank 0
    checkpoint.unlock_run(lock)
    assert claimed == base + "-2"
    rank0_sends(monkeypatch, claimed)
    _, (got, lock, ck) = open_with(QUICK, rank=1)
    assert (got, lock, ck) == (base + "-2", None, None)


def test_a_failed_claim_on_rank0_still_answers_the_other_ranks(tmp_path, monkeypatch):
    """Rank 0 whose claim fails (the folder is in use) still sends (None), so the other ranks never
    wait on a broadcast that does not come; a rank that receives None raises PeerFailed (quiet exit 2)."""
    out = str(tmp_path / "run")
    held = checkpoint.lock_run(out)
    sent = rank0_sends(monkeypatch, None)
    try:
        with pytest.raises(train_cli.UserError, match="in use"):
            open_with(QUICK + ["--out", out])
        assert sent == [None]
        with pytest.raises(train_cli.PeerFailed):
            open_with(QUICK + ["--out", out], rank=1)
    finally:
        checkpoint.unlock_run(held)


def test_a_new_run_without_out_takes_the_first_free_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = []
    for _ in range(3):
        _, (out, lock, ck) = open_with(QUICK)
        names.append(out)
        checkpoint.unlock_run(lock)
        fake_run(out, 2, 2)                      # a finished run now holds it
    base = "runs/digits-dfc-ce-symmetric0.4-s0-n300-bs64-ep2"
    assert names == [base, base + "-2", base + "-3"] and ck is None
    held = checkpoint.lock_run(base + "-4")      # a running train.py holds the next one
    _, (out, lock, _) = open_with(QUICK)
    checkpoint.unlock_run(lock)
    checkpoint.unlock_run(held)
    assert out == base + "-5"


def test_default_out_names_a_run_by_its_non_default_flags():
    defaults = vars(train.build_parser().parse_args([]))
    assert runfolder.default_out(defaults, defaults) == "runs/digits-dfc-ce-symmetric0.4-s0"
    a = train.build_parser().parse_args(["--keep", "0.3", "--out", "ignored", "--resume"])
    assert runfolder.default_out(vars(a), defaults) == "runs/digits-dfc-ce-symmetric0.4-s0-keep0.3"


def test_a_stale_lock_is_taken_over_with_one_warning(tmp_path, capsys):
    out = tmp_path / "run"
    dead = stale_lock(out)
    _, (_, lock, _) = open_with(["--out", str(out)])
    checkpoint.unlock_run(lock)
    err = capsys.readouterr().err
    assert err.startswith("train.py: warning:") and f"pid {dead.pid}" in one_line(err)


# ----------------------------------------------------------------------------- Checkpoints

WHAT_RESTORES = ("nets", "opts", "step", "elr_t", "rng")   # checkpoint entries restore_state loads


def assert_same(x, y, where="checkpoint"):
    """Nested dicts/lists of tensors and plain values are equal, tensors by torch.equal."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype, where
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert isinstance(y, dict) and sorted(x, key=str) == sorted(y, key=str), where
        for k in x:
            assert_same(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"


def trained(tmp_path, flags):
    """A run stopped after epoch 1 of 2 -> its loaded checkpoint (nets trained, momentum
    buffers, a mask with moments, ELR memory, step > 0)."""
    out = str(tmp_path / "trained")
    assert train.main(QUICK + ["--out", out, "--stop-after", "1"] + flags) == 0
    return runfolder.load_checkpoint(os.path.join(out, "checkpoint.pt"), CPU)


@pytest.mark.parametrize("flags", [["--method", "elr", "--head", "dfc", "--dcm-stats", "interval", "--dcm-interval", "3"],
                                   ["--method", "coteaching", "--head", "dkan"]])
def test_restore_state_then_checkpoint_state_gives_back_the_checkpoint_exactly(tmp_path, flags):
    """restore_state is the inverse of checkpoint_state: a new run's state takes the
    trained checkpoint's networks, optimizer buffers, masks, step, ELR memory and RNG
    state exactly (torch.equal), from the file and again from an in-memory snapshot."""
    ck = trained(tmp_path, flags)
    assert ck["step"] > 0 and ck["opts"][0]["state"]
    _, d, st = new_run(flags)
    fresh = runfolder.checkpoint_state(st, 0, runfolder.RunLog({}))
    for key in ("nets", "opts", "step"):   # so the comparisons below can fail
        with pytest.raises(AssertionError):
            assert_same(fresh[key], ck[key])
    torch.manual_seed(123)                          # the RNG moves on; restore_state sets it back
    runfolder.restore_state(st, ck, noisy_labels(d), CPU)
    back = runfolder.checkpoint_state(st, 1, runfolder.RunLog({}))
    for key in WHAT_RESTORES:
        assert_same(back[key], ck[key], key)
    _, d2, st2 = new_run(flags)
    runfolder.restore_state(st2, back, noisy_labels(d2), CPU)
    again = runfolder.checkpoint_state(st2, 1, runfolder.RunLog({}))
    for key in WHAT_RESTORES:
        assert_same(again[key], back[key], key)


@pytest.mark.parametrize("saved, flags, needle", [
    ([], ["--head", "kan"], "do not fit"),                               # other head parameters
    ([], ["--backbone", "cnn8"], "do not fit"),                          # other backbone
    (["--head", "kan"], ["--head", "kan", "--kan-grid", "7"], "do not fit"),   # same names, other shapes
    ([], ["--method", "coteaching"], "this run builds 2"),               # another number of networks
    ([], ["--seed", "1"], "noisy labels differ"),                        # same shapes, other labels
])
def test_restore_state_refuses_a_checkpoint_of_another_run_in_one_line(tmp_path, saved, flags, needle):
    ck = trained(tmp_path, saved)
    _, d, st = new_run(flags)
    with pytest.raises(train_cli.UserError) as e:
        runfolder.restore_state(st, ck, noisy_labels(d), CPU)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("--resume:")


@pytest.mark.parametrize("payload", [{"a": 1}, torch.zeros(3), {"epoch": 1}, {"epoch": 1, "config": {"lr": 0.1}},
                                     {"epoch": "1", "config": {"epochs": 2}}])
def test_a_foreign_checkpoint_is_one_line(tmp_path, payload):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, payload)
    with pytest.raises(train_cli.UserError, match="not a train.py checkpoint") as e:
        runfolder.load_checkpoint(path, CPU)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["no best", "history a dict", "no extended", "no y_noisy"])
def test_a_checkpoint_of_another_version_is_refused_in_one_line_before_loading(tmp_path, damage):
    ck = trained(tmp_path, [])
    if damage == "no best":
        del ck["best"]
    elif damage == "history a dict":
        ck["history"] = {}
    elif damage == "no extended":
        del ck["extended"]
    else:
        del ck["y_noisy"]
    _, d, st = new_run([])
    before = [p.detach().clone() for p in st.nets[0].parameters()]
    with pytest.raises(train_cli.UserError, match="another version") as e:
        runfolder.restore_state(st, ck, noisy_labels(d), CPU)
    assert "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, st.nets[0].parameters()))


def test_a_checkpoint_state_passes_the_weights_only_loader(tmp_path):
    _, _, st = new_run(["--method", "elr", "--dcm-stats", "interval"])
    path = str(tmp_path / "checkpoint.pt")
    log = runfolder.RunLog({"lr": 0.05, "epochs": 2}, [], {"acc": -1.0}, [{"at_epoch": 1}])
    checkpoint.save_checkpoint(path, runfolder.checkpoint_state(st, 0, log))
    ck = runfolder.load_checkpoint(path, CPU)
    assert (ck["epoch"], ck["config"], ck["extended"], ck["best"]) == (0, {"lr": 0.05, "epochs": 2}, [{"at_epoch": 1}], {"acc": -1.0})


def test_load_checkpoint_errors_are_one_line_and_a_missing_checksum_warns(tmp_path, capsys):
    path = str(tmp_path / "checkpoint.pt")
    with pytest.raises(train_cli.UserError, match="another run") as e:
        runfolder.load_checkpoint(path, CPU)
    assert "\n" not in str(e.value)
    checkpoint.save_checkpoint(path, {"epoch": 4, "config": {"epochs": 5}})
    os.remove(path + checkpoint.SUM_SUFFIX)
    capsys.readouterr()
    assert runfolder.load_checkpoint(path, CPU)["epoch"] == 4
    assert "unverified" in one_line(capsys.readouterr().err)
    with open(path, "r+b") as f:
        f.write(b"\0" * 64)
    checkpoint.save_checkpoint(str(tmp_path / "other.pt"), {"epoch": 1})
    os.replace(str(tmp_path / "other.pt.sha256"), path + checkpoint.SUM_SUFFIX)   # a checksum of other bytes
    with pytest.raises(train_cli.UserError, match="corrupt") as e:
        runfolder.load_checkpoint(path, CPU)
    assert str(e.value).count("corrupt") == 1 and "another run" in str(e.value)   # said once, with the way out


# ----------------------------------------------------------------------------- config.json records

def test_resume_record_appends_to_the_original_config_and_never_rewrites_it(tmp_path):
    out = str(tmp_path)
    original = {"epochs": 3, "lr": 0.05, "device_used": "cuda:0", "world_size": 4}
    checkpoint.write_json(os.path.join(out, "config.json"), original)
    meta = {"epochs": 3, "lr": 0.05, "device_used": "cpu", "world_size": 1}
    a, _ = parse(["--resume", "--epochs", "3"])
    cfg = runfolder.resume_record(out, dict(meta, extend=a.extend, epochs=a.epochs), {"epoch": 1, "config": {"epochs": 3}})
    assert cfg == dict(original, resumed=[{"at_epoch": 1, "device_used": "cpu", "world_size": 1}])
    checkpoint.write_json(os.path.join(out, "config.json"), cfg)
    a, _ = parse(["--resume", "--extend", "--epochs", "8"])
    meta = dict(meta, extend=a.extend, epochs=a.epochs)
    cfg = runfolder.resume_record(out, meta, {"epoch": 3, "config": {"epochs": 3}})
    assert [r["at_epoch"] for r in cfg["resumed"]] == [1, 3] and cfg["device_used"] == "cuda:0"
    assert cfg["extended"] == [{"at_epoch": 3, "epochs_before": 3, "epochs_after": 8}] and cfg["epochs"] == 8
    os.remove(os.path.join(out, "config.json"))   # lost: the record starts from this run's meta
    assert runfolder.resume_record(out, meta, {"epoch": 3, "config": {"epochs": 3}})["device_used"] == "cpu"


def test_extended_history_adds_one_entry_per_extend():
    a, _ = parse(["--resume", "--extend", "--epochs", "9"])
    ck = {"epoch": 5, "config": {"epochs": 5}, "extended": [{"at_epoch": 3, "epochs_before": 3, "epochs_after": 5}]}
    assert runfolder.extended_history(vars(a), ck) == ck["extended"] + [{"at_epoch": 5, "epochs_before": 5, "epochs_after": 9}]
    assert runfolder.extended_history(vars(parse(["--resume"])[0]), ck) == ck["extended"]
    assert runfolder.extended_history(vars(parse([])[0]), None) == []


def test_run_log_starts_empty_or_from_the_checkpoint_and_records_each_epoch():
    """RunLog.start: a new run's log is empty with no best epoch; a resumed run's continues the
    checkpoint's rows, best epochs and --extend entries (plus this --extend). add() keeps the best."""
    a, _ = parse([])
    new = runfolder.RunLog.start(vars(a), None)
    assert (new.config, new.history, new.best, new.extended) == (vars(a), [], {"acc": -1.0, "epoch": 0}, [])
    rows_so_far = [{"epoch": 1, "test_acc": 0.5}]
    ck = {"epoch": 1, "config": {"epochs": 1}, "history": rows_so_far, "best": {"acc": 0.5, "epoch": 1}, "extended": []}
    a, _ = parse(["--resume", "--extend", "--epochs", "3"])
    log = runfolder.RunLog.start(vars(a), ck)
    assert log.history == rows_so_far and log.best == {"acc": 0.5, "epoch": 1} and log.config["epochs"] == 3
    assert log.extended == [{"at_epoch": 1, "epochs_before": 1, "epochs_after": 3}]
    log.add({"epoch": 2, "test_acc": 0.4, "val_acc_noisy": 0.3})
    log.add({"epoch": 3, "test_acc": 0.6, "val_acc_noisy": 0.2})
    assert [r["epoch"] for r in log.history] == [1, 2, 3]
    assert log.best == {"acc": 0.6, "epoch": 3, "val_acc": 0.3, "val_epoch": 2, "test_at_val": 0.4}


def test_initial_files_of_a_new_run_and_of_an_overwrite(tmp_path):
    a, d, st = new_run(["--overwrite"])
    out = str(tmp_path / "run")
    fake_run(out, 3)
    (tmp_path / "run" / "final.json").write_text("{}")
    meta = runfolder.run_meta(vars(a), out, distributed.Dist(), CPU, {}, 300)
    runfolder.initial_files(out, None, meta, d, st, runfolder.RunLog.start(vars(a), None))
    assert json.load(open(os.path.join(out, "config.json")))["n_train"] == 300
    assert rows(out) == [] and os.path.exists(os.path.join(out, "noise_report.json"))
    assert runfolder.load_checkpoint(os.path.join(out, "checkpoint.pt"), CPU)["epoch"] == 0
    aside = os.path.join(out, checkpoint.REPLACED)   # the old run waits there until the new one finishes
    assert sorted(os.listdir(aside)) == ["checkpoint.pt", "checkpoint.pt.sha256", "final.json"]


# ----------------------------------------------------------------------------- Session: train.train's harness

def test_resume_returns_the_saved_flags_and_leaves_the_given_ones_alone(tmp_path):
    out = str(tmp_path / "run")
    fake_run(out, 1, 3, "--keep", "0.3")
    a, typed = parse(["--out", out, "--resume"])
    given = dict(vars(a))
    got, lock, ck, config = runfolder.open_run(given, typed, train_cli.defaults(), CPU, distributed.Dist())
    checkpoint.unlock_run(lock)
    assert given == vars(a) and (config["keep"], config["epochs"], ck["epoch"]) == (0.3, 3, 1)


def test_session_restores_the_signal_handlers_and_releases_the_folder_on_an_error(tmp_path):
    import signal
    out = str(tmp_path / "run")
    a, typed = parse(QUICK + ["--out", out])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="in the loop"):
        with runfolder.Session() as run:
            assert signal.getsignal(signal.SIGTERM) is not before
            assert run.open(vars(a), typed, train_cli.defaults(), CPU)["out"] == out and run.first_epoch == 1
            assert os.path.exists(os.path.join(out, checkpoint.LOCK_NAME))
            raise RuntimeError("in the loop")
    assert signal.getsignal(signal.SIGTERM) is before
    assert not os.path.exists(out)   # made for the run, nothing written: removed with the lock


def test_session_writes_the_runs_files_and_stops_after_stop_after(tmp_path):
    """begin: config.json, noise_report.json, metrics.jsonl, the epoch-0 checkpoint; end_epoch: the row
    with its timing, the checkpoint and metrics.jsonl, and 0 at --stop-after; finish: final.json."""
    out = str(tmp_path / "run")
    a, d, st = new_run(["--out", out, "--stop-after", "1"])
    row = dict(epoch=1, lr=0.05, train_loss=1.0, test_acc=0.5, train_acc_noisy=None, train_acc_clean=None,
               kept=1.0, mask_change=0.0, grad_cos_last=None)
    with runfolder.Session() as run:
        run.open(vars(a), set(), train_cli.defaults(), CPU)
        assert run.begin(st, d, {}, CPU) and st.stop is run.stop
        assert runfolder.load_checkpoint(os.path.join(out, "checkpoint.pt"), CPU)["epoch"] == 0
        assert run.end_epoch(dict(row), 0.0, 100.0) == 0          # --stop-after 1 of 2 epochs
        assert rows(out)[0]["eta_s"] == rows(out)[0]["seconds"] and rows(out)[0]["samples_per_s"] == 100.0
        assert runfolder.load_checkpoint(os.path.join(out, "checkpoint.pt"), CPU)["epoch"] == 1
        assert run.end_epoch(dict(row, epoch=2), 0.0, 100.0) is None and run.finish(d) == 0
    assert json.load(open(os.path.join(out, "final.json")))["epochs"] == 2
