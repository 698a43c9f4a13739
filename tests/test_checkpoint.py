"""checkpoint.py: checkpoints are verified before use and never execute code, a write
that fails or is killed leaves a loadable checkpoint, one run holds a folder, and
default run names tell configurations apart."""
import errno
import hashlib
import os
import shutil
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import checkpoint
import presets
import train


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"epoch": seed, "nets": [{"w": torch.randn(64, 64, generator=g)}], "history": [{"epoch": 1, "acc": 0.5}],
            "config": {"lr": 0.05, "head": "dfc", "limit": None}, "masks": [{"mask": torch.ones(3, 4), "pooled": None}]}


def assert_state_equal(a, b):
    assert a["epoch"] == b["epoch"] and a["history"] == b["history"] and a["config"] == b["config"]
    assert torch.equal(a["nets"][0]["w"], b["nets"][0]["w"])


# ----------------------------------------------------------------------------- Checkpoints

def test_saved_checkpoint_loads_verified_and_equal(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(1))
    loaded, verified = checkpoint.load_checkpoint(path)
    assert verified
    assert_state_equal(loaded, state(1))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert open(path + checkpoint.SUM_SUFFIX).read().split() == [digest, "checkpoint.pt"]


def test_zeroed_block_is_reported_not_loaded(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(1))
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(4096))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt") as e:
        checkpoint.load_checkpoint(path)
    assert "\n" not in str(e.value) and str(e.value).count("corrupt") == 1   # said once


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_are_a_one_line_error(tmp_path, seed):
    """No sidecar: unverified, then torch.load fails, in whatever way the bytes make it fail
    (seeded bytes, half of them behind a pickle header so the unpickler gets further)."""
    path = str(tmp_path / "checkpoint.pt")
    body = np.random.default_rng(seed).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write((b"\x80\x02" if seed % 2 else b"") + body)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(path)
    assert "\n" not in str(e.value) and str(e.value).count("corrupt") == 1


class Boom:
    """An object whose unpickling runs code: what a tampered checkpoint would contain."""
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_with_code_is_refused_even_with_a_matching_checksum(tmp_path):
    path, target = str(tmp_path / "checkpoint.pt"), str(tmp_path / "pwned")
    torch.save({"epoch": 1, "x": Boom(target)}, path)
    digest = checkpoint.sha256_file(path)
    with open(path + checkpoint.SUM_SUFFIX, "w") as f:
        f.write(f"{digest}  checkpoint.pt\n")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_checkpoint(path)
    assert not os.path.exists(target)


@pytest.mark.parametrize("sidecar", [None, "", "\n \n"])
def test_missing_or_empty_sidecar_loads_unverified(tmp_path, sidecar):
    """No sidecar, or an empty one (a full disk while writing it): the good payload loads, unverified."""
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(2))
    os.remove(path + checkpoint.SUM_SUFFIX)
    if sidecar is not None:
        open(path + checkpoint.SUM_SUFFIX, "w").write(sidecar)
    loaded, verified = checkpoint.load_checkpoint(path)
    assert not verified
    assert_state_equal(loaded, state(2))


def killed_save(monkeypatch, path, payload, crash_at):
    """save_checkpoint killed at its crash_at-th os.replace: 1 = sidecar listing old+new,
    2 = payload, 3 = sidecar new only (nothing after the kill runs)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, payload)
    monkeypatch.setattr(os, "replace", real)


@pytest.mark.parametrize("crash_at, expect", [(1, 1), (2, 1), (3, 2)])
def test_a_save_killed_between_any_two_steps_leaves_a_verified_checkpoint(tmp_path, monkeypatch, crash_at, expect):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(1))
    killed_save(monkeypatch, path, state(2), crash_at)
    loaded, verified = checkpoint.load_checkpoint(path)
    assert verified and loaded["epoch"] == expect


@pytest.mark.parametrize("first", [1, 2, 3])
@pytest.mark.parametrize("second", [1, 2, 3])
def test_two_saves_killed_in_a_row_leave_a_verified_checkpoint(tmp_path, monkeypatch, first, second):
    """A resumed run killed again before its first save finished: the file on disk must stay
    listed (the sidecar's first digest may name a payload that never replaced it)."""
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(1))
    killed_save(monkeypatch, path, state(2), first)
    killed_save(monkeypatch, path, state(3), second)
    loaded, verified = checkpoint.load_checkpoint(path)
    assert verified and loaded["epoch"] in (1, 2, 3)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, state(1))

    def full(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise error
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint is intact") as e:
        checkpoint.save_checkpoint(path, state(2))
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "checkpoint.pt.sha256"]   # no temp file left
    loaded, verified = checkpoint.load_checkpoint(path)
    assert verified and loaded["epoch"] == 1


def test_a_failed_write_on_a_full_disk_says_so(tmp_path, monkeypatch):
    """torch's zip writer words a full disk as 'unexpected pos 64 vs 0': the line adds the free space."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1234))

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match=r"the disk is full: 1234 bytes free\); no earlier checkpoint"):
        checkpoint.save_checkpoint(str(tmp_path / "checkpoint.pt"), state(1))


def test_train_checkpoint_state_loads_with_weights_only(tmp_path):
    """Everything train.py checkpoints (nets, optimizers, masks with pooled moments, rng)
    passes torch.load(weights_only=True)."""
    out = str(tmp_path / "run")
    assert train.main(["--out", out, "--limit-train", "200", "--epochs", "1", "--batch-size", "64",
                       "--dcm-stats", "interval", "--dcm-interval", "5", "--method", "elr"]) == 0
    ck, verified = checkpoint.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert verified and ck["epoch"] == 1 and ck["nets"][0]["head.pooled_n"] is not None


def test_set_aside_then_restore_gives_back_exactly_the_old_run(tmp_path):
    out = str(tmp_path)
    checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), state(1))
    checkpoint.write_json(os.path.join(out, "final.json"), {"test_acc_last": 0.9})
    os.makedirs(os.path.join(out, "masks"))
    checkpoint.write_text(os.path.join(out, "masks", "epoch_001.npz"), "m")
    before = {p: open(os.path.join(out, p), "rb").read() for p in
              ("checkpoint.pt", "checkpoint.pt.sha256", "final.json", "masks/epoch_001.npz")}
    checkpoint.set_aside(out)
    assert sorted(os.listdir(out)) == [checkpoint.REPLACED]
    checkpoint.write_json(os.path.join(out, "final.json"), {"test_acc_last": 0.1})   # the failing new run
    checkpoint.restore_aside(out)
    assert {p: open(os.path.join(out, p), "rb").read() for p in before} == before
    assert not os.path.exists(os.path.join(out, checkpoint.REPLACED))


def test_a_second_overwrite_after_an_unfinished_one_keeps_the_last_good_run(tmp_path):
    """--overwrite killed before it finished leaves the good run in replaced/ and a partial
    run in DIR; the next --overwrite must set aside nothing over it, and a failure then puts
    the good run back."""
    out = str(tmp_path)
    checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), state(1))
    checkpoint.write_json(os.path.join(out, "final.json"), {"test_acc_last": 0.9})   # the good run
    good = open(os.path.join(out, "final.json"), "rb").read()
    checkpoint.set_aside(out)
    checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), state(2))        # killed mid-run: no final.json
    checkpoint.set_aside(out)                                                       # the second --overwrite
    assert sorted(os.listdir(out)) == [checkpoint.REPLACED]
    checkpoint.write_text(os.path.join(out, "metrics.jsonl"), "{}\n")               # ... which fails too
    checkpoint.restore_aside(out)
    assert open(os.path.join(out, "final.json"), "rb").read() == good
    assert checkpoint.load_checkpoint(os.path.join(out, "checkpoint.pt"))[0]["epoch"] == state(1)["epoch"]


def test_an_overwrite_after_a_finished_one_drops_the_stale_replaced(tmp_path):
    out = str(tmp_path)
    os.makedirs(os.path.join(out, checkpoint.REPLACED))
    checkpoint.write_json(os.path.join(out, checkpoint.REPLACED, "final.json"), {"test_acc_last": 0.1})   # stale
    checkpoint.write_json(os.path.join(out, "final.json"), {"test_acc_last": 0.9})   # finished, drop_aside missed
    checkpoint.set_aside(out)
    assert open(os.path.join(out, checkpoint.REPLACED, "final.json")).read().count("0.9") == 1


@pytest.mark.parametrize("files, holds", [
    ((), False), (("config.json",), False), (("metrics.jsonl:",), False),
    (("checkpoint.pt",), True), (("final.json",), True), (("metrics.jsonl:{}",), True),
    ((checkpoint.REPLACED + "/final.json:{}",), True)])
def test_a_folder_holds_a_run_when_it_has_results(tmp_path, files, holds):
    for f in files:
        name, _, text = f.partition(":")
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert checkpoint.holds_run(str(tmp_path)) == holds


# ----------------------------------------------------------------------------- Lock

def test_taking_the_lock_removes_temp_files_a_killed_run_left(tmp_path):
    folder = tmp_path / "run"
    (folder / "masks").mkdir(parents=True)
    left = [folder / "checkpoint.pt.tmp4242", folder / "metrics.jsonl.tmp17", folder / "masks" / "epoch_003.npz.tmp9"]
    kept = [folder / "checkpoint.pt", folder / "notes.tmp", folder / "masks" / "epoch_003.npz"]
    for p in left + kept:
        p.write_text("x")
    lock = checkpoint.lock_run(str(folder))
    checkpoint.unlock_run(lock)
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


def test_a_failed_start_removes_the_folders_it_created_and_only_those(tmp_path):
    (tmp_path / "kept").mkdir()
    lock = checkpoint.lock_run(str(tmp_path / "kept" / "a" / "b" / "run"))
    checkpoint.unlock_run(lock)                                    # nothing was written
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == []
    lock = checkpoint.lock_run(str(tmp_path / "kept" / "c" / "run"))
    (tmp_path / "kept" / "c" / "notes.txt").write_text("a user's file")   # appeared meanwhile: stays
    checkpoint.unlock_run(lock)
    assert os.listdir(tmp_path / "kept" / "c") == ["notes.txt"]


def test_a_held_folder_cannot_be_locked_again_and_names_the_holder(tmp_path):
    folder = str(tmp_path / "run")
    lock = checkpoint.lock_run(folder)
    with pytest.raises(checkpoint.LockHeld, match=re.escape(f"(pid {os.getpid()} on host {socket.gethostname()}, lock ")):
        checkpoint.lock_run(folder)
    checkpoint.unlock_run(lock)
    checkpoint.unlock_run(checkpoint.lock_run(folder))   # free again after release


def test_lock_held_by_another_process(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, checkpoint; checkpoint.lock_run(sys.argv[1]); "
                               "print('held', flush=True); sys.stdin.read()", folder],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.abspath(checkpoint.__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(checkpoint.LockHeld, match=re.escape(f"(pid {holder.pid} on host {socket.gethostname()}, ")):
            checkpoint.lock_run(folder)
    finally:
        holder.communicate("")
    lock = checkpoint.lock_run(folder)   # the kernel released the lock of the holder, which exited without unlocking
    assert lock.stale.split()[0] == str(holder.pid)
    checkpoint.unlock_run(lock)


def test_stale_lock_of_a_dead_pid_is_taken_over_and_reported(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / checkpoint.LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()}\n")
    lock = checkpoint.lock_run(str(folder))
    try:
        assert lock.stale == f"{dead.pid} {socket.gethostname()}"
        msg = checkpoint.stale_message(lock)
        assert f"left by pid {dead.pid} on host {socket.gethostname()}, " in msg and "no longer running" in msg
        assert (folder / checkpoint.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    finally:
        checkpoint.unlock_run(lock)
    assert not (folder / checkpoint.LOCK_NAME).exists()


def test_unlock_removes_a_folder_it_created_only_when_empty(tmp_path):
    empty, used = str(tmp_path / "a"), str(tmp_path / "b")
    checkpoint.unlock_run(checkpoint.lock_run(empty))
    assert not os.path.exists(empty)
    lock = checkpoint.lock_run(used)
    checkpoint.write_json(os.path.join(used, "config.json"), {})
    checkpoint.unlock_run(lock)
    assert os.listdir(used) == ["config.json"]


def test_unusable_out_paths_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    for folder, needle in ((tmp_path / "file", "not a folder"), (tmp_path / "file" / "sub", "is a file")):
        with pytest.raises(checkpoint.LockError, match=needle):
            checkpoint.lock_run(str(folder))
    ro = tmp_path / "ro"
    ro.mkdir()

    def denied(path, *args, **kwargs):   # root ignores chmod, so a read-only folder is simulated
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(checkpoint.LockError, match="Permission denied"):
        checkpoint.lock_run(str(ro))


# ----------------------------------------------------------------------------- Run names

DEFAULTS = vars(train.build_parser().parse_args([]))


PARSER = train.build_parser()


def name_of(argv):
    return checkpoint.default_run_name(vars(PARSER.parse_args(argv)), DEFAULTS)


def test_default_flags_give_todays_name():
    assert name_of([]) == "digits-dfc-ce-symmetric0.4-s0"
    assert name_of(["--seed", "3", "--noise-rate", "0.6"]) == "digits-dfc-ce-symmetric0.6-s3"


def test_a_run_without_synthetic_noise_is_named_without_a_rate():
    assert name_of(["--noise", "none"]) == "digits-dfc-ce-none-s0"
    assert name_of(["--noise", "none", "--noise-rate", "0.2"]) == "digits-dfc-ce-none0.2-s0"   # still distinct


def test_a_differing_flag_is_in_the_name_readably():
    assert name_of(["--keep", "0.3"]) == "digits-dfc-ce-symmetric0.4-s0-keep0.3"
    assert name_of(["--epochs", "10", "--lr", "0.01"]) == "digits-dfc-ce-symmetric0.4-s0-lr0.01-ep10"   # parser order
    assert name_of(["--out", "x", "--threads", "1", "--device", "cpu"]) == name_of([])   # cannot change results


def test_limit_test_has_a_short_token_and_a_preset_adds_none():
    base = "digits-dfc-ce-symmetric0.4-s0"
    assert name_of(["--limit-train", "2000", "--limit-test", "1000", "--epochs", "2"]) == f"{base}-n2000-ntest1000-ep2"
    assert name_of(["--limit-test", "1000"]) == f"{base}-ntest1000"


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_a_preset_names_a_run_as_its_flags_typed_out_do(preset):
    """--preset NAME expands into the preset's flags (presets.expand), which name the run
    with their own tokens; the preset's name adds nothing (config.json records it)."""
    argv, _ = presets.expand(["--preset", preset])
    assert name_of(argv) == name_of(presets.flags(preset))
    assert "preset" not in name_of(argv)


NOT_NAMED = set(checkpoint.NAME_BASE) | checkpoint.NAME_IGNORED | checkpoint.NAME_REDUNDANT | checkpoint.PATH_FLAGS


def test_every_flag_that_names_a_run_has_a_short_token():
    """No experiment flag falls back to a long '-flag-name=value' token, and SHORT names only real flags."""
    dests = {a.dest for a in train.build_parser()._actions} - {"help"}
    assert dests - NOT_NAMED - set(checkpoint.SHORT) == set()
    assert set(checkpoint.SHORT) <= dests - NOT_NAMED
    prefixes = [p for p in checkpoint.SHORT.values() if p]
    assert len(prefixes) == len(set(prefixes)), "two flags share a token prefix"


def token_values(action):
    """Non-default values a flag takes in practice (flags without a prefix: their real values)."""
    import nets
    import noise
    import train_cli
    known = {"backbone": nets.BACKBONES, "method": train_cli.METHODS, "loss_arg": [["q=0.5"], ["q=0.7", "a=1"]],
             "noisy_labels": sorted(set(noise.CIFAR_N_KEYS[10]) | set(noise.CIFAR_N_KEYS[100]))}
    if action.dest in known:
        values = known[action.dest]
    elif action.choices:
        values = action.choices
    elif action.nargs == 0:   # a switch
        values = [True]
    elif action.type is int:
        values = [2, 7, 10, 100]
    else:
        values = [0.1, 0.25, 1.0, 1e-05]
    return [v for v in values if v != action.default]


def test_distinct_flag_values_give_distinct_tokens():
    """Every (flag, value) gives its own token: no two flags, and no two values of a flag, share one."""
    seen = {}
    for action in train.build_parser()._actions:
        if action.dest in checkpoint.SHORT:
            for v in token_values(action):
                tok = checkpoint._token(action.dest, v)
                assert tok not in seen, (tok, (action.dest, v), seen.get(tok))
                assert "=" not in tok or action.dest == "loss_arg", tok
                seen[tok] = (action.dest, v)
    assert len(seen) > 2 * len(checkpoint.SHORT)


FLAG_VALUES = {"--keep": ["0.05", "0.3", "1"], "--noise": ["none", "asymmetric"], "--noise-rate": ["0.2", "0.6"], "--lr": ["0.01", "0.1"], "--epochs": ["5", "60"],
               "--dcm-interval": ["2", "10"], "--dcm-scope": ["global"], "--weight-decay": ["0", "0.0005"],
               "--batch-size": ["32", "256"], "--backbone": ["cnn8"], "--method": ["elr", "coteaching"],
               "--loss-arg": ["q=0.5", "q=0.7"], "--data-dir": ["/a/b", "/a/c"], "--val-frac": ["0.1"],
               "--limit-train": ["300", "1000"], "--limit-test": ["300", "1000"], "--dcm-freeze": [None],
               "--augment": ["none"]}


@st.composite
def configs(draw):
    flags = draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), unique=True, max_size=len(FLAG_VALUES)))
    argv = []
    for f in flags:
        v = draw(st.sampled_from(FLAG_VALUES[f]))
        argv += [f] if v is None else [f, v]
    return argv


@given(configs(), configs())
def test_different_configurations_never_share_a_name(a, b):
    ca, cb = (vars(train.build_parser().parse_args(x)) for x in (a, b))
    if ca != cb:
        assert name_of(a) != name_of(b)
    else:
        assert name_of(a) == name_of(b)
    config = vars(PARSER.parse_args(a))
    base = checkpoint.default_run_name({**DEFAULTS, **{k: config[k] for k in checkpoint.NAME_BASE}}, DEFAULTS)
    assert len(name_of(a)) <= len(base) + 1 + checkpoint.NAME_MAX + 10


@given(configs())
def test_changing_one_flag_changes_the_name(a):
    """Neighbours, where a collision would hide: a configuration and each copy of it with
    one flag set to another value (later flags win in argparse)."""
    ca = vars(PARSER.parse_args(a))
    for flag, values in sorted(FLAG_VALUES.items()):
        for value in values:
            b = a + ([flag] if value is None else [flag, value])
            assert (name_of(a) != name_of(b)) == (ca != vars(PARSER.parse_args(b))), (a, b)


def test_claim_skips_locked_and_finished_folders(tmp_path):
    base = str(tmp_path / "runs" / "x")
    first, lock1 = checkpoint.claim_run_dir(base, fresh=True)
    second, lock2 = checkpoint.claim_run_dir(base, fresh=True)    # base is locked by a running run
    os.makedirs(base + "-3")
    open(os.path.join(base + "-3", "checkpoint.pt"), "w").close()  # -3 holds a run
    os.makedirs(base + "-4")
    open(os.path.join(base + "-4", "final.json"), "w").close()     # -4 a finished run whose checkpoint was deleted
    third, lock3 = checkpoint.claim_run_dir(base, fresh=True)
    assert (first, second, third) == (base, base + "-2", base + "-5")
    for lock in (lock1, lock2, lock3):
        checkpoint.unlock_run(lock)
    with pytest.raises(checkpoint.LockHeld):
        lock = checkpoint.lock_run(base)
        checkpoint.claim_run_dir(base, fresh=False)                # --out/--resume: exactly that folder
    checkpoint.unlock_run(lock)


CKPT_KEYS = {"config", "epoch", "step", "history", "best", "nets", "opts", "elr_t", "y_noisy", "rng", "extended"}


def test_train_state_round_trips_through_the_checkpoint_payload():
    """runfolder.checkpoint_state writes the payload keys, and restore_state puts them back into a
    fresh TrainState: networks (their heads' masks and schedules), optimizers, step, ELR memory."""
    import data
    import runfolder
    a = train.build_parser().parse_args(["--limit-train", "200", "--batch-size", "64", "--method", "elr", "--keep", "0.3"])
    cpu = torch.device("cpu")
    d = data.prepare_training_data(data.DataConfig.from_config(vars(a)), cpu)
    st = train.init_state(a, d, cpu, None)
    xb = data.to_float(d.x[:64], d.mean, d.std)
    for _ in range(2):
        train.train_step(a, st, xb, d.y_noisy[:64], d.ids[:64], lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction="none"), 0.0, 1)
        st.step += 1
    ck = runfolder.checkpoint_state(st, 3, runfolder.RunLog(vars(a), [], {"acc": 0.5, "epoch": 3}))
    assert set(ck) == CKPT_KEYS and ck["step"] == 2 and ck["elr_t"] is st.elr_t
    fresh = train.init_state(a, d, cpu, None)
    assert fresh.step == 0 and not torch.equal(fresh.elr_t, st.elr_t)
    runfolder.restore_state(fresh, ck, d.y_noisy, cpu)
    assert fresh.step == 2 and torch.equal(fresh.elr_t, st.elr_t)
    h, g = fresh.nets[0].head, st.nets[0].head
    assert torch.equal(h.mask, g.mask) and h.updates == g.updates == 2 and 0 < float(g.mask.mean()) < 0.5
    for k, t in st.nets[0].state_dict().items():
        assert torch.equal(fresh.nets[0].state_dict()[k], t), k
    assert fresh.opts[0].state_dict()["state"].keys() == st.opts[0].state_dict()["state"].keys()


def test_a_failed_atomic_write_names_the_target_not_the_temp_file(tmp_path):
    target = tmp_path / "noise_report.json"
    target.mkdir()                                       # a folder where the file should go
    with pytest.raises(OSError) as e:
        checkpoint.write_json(str(target), {"rate": 0.4})
    assert e.value.filename == str(target) and not list(tmp_path.glob("*.tmp*"))


def _claim_at_barrier(base, barrier, results):
    """One of several processes started together: claim a default-name folder, report it."""
    barrier.wait()
    try:
        out, _lock = checkpoint.claim_run_dir(base, fresh=True)
        results.put(out)
        barrier.wait()          # hold the lock until every process has claimed
    except Exception as e:      # noqa: BLE001 (reported to the test)
        results.put(f"error: {e}")
        barrier.abort()


def test_simultaneous_default_name_runs_each_take_their_own_folder(tmp_path):
    """Runs started at the same instant under one default name (fork + barrier, real processes)
    each take base, base-2, ...: creating the folder races, and losing the race is "taken,
    try the next name", never "exists and is not a folder"."""
    import multiprocessing as mproc
    ctx = mproc.get_context("fork")
    n, base = 8, str(tmp_path / "runs" / "x")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_at_barrier, args=(base, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert not [g for g in got if g.startswith("error")], got
    assert sorted(got) == sorted([base] + [f"{base}-{k}" for k in range(2, n + 1)])


def test_make_folder_treats_a_folder_made_by_another_run_meanwhile_as_existing(tmp_path, monkeypatch):
    folder = str(tmp_path / "a")

    def racing_makedirs(path, *a, **k):   # another process wins the race between isdir and makedirs
        os.mkdir(path)
        raise FileExistsError(errno.EEXIST, "File exists", path)
    monkeypatch.setattr(checkpoint.os, "makedirs", racing_makedirs)
    assert checkpoint.make_folder(folder) is None and os.path.isdir(folder)


def test_a_full_disk_when_writing_the_lock_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    """No space for the lock file's pid line: one LockError naming DIR/.lock, and the lock file
    and the folders lock_run created are gone (they were left behind, with an unnamed error)."""
    folder = tmp_path / "a" / "b" / "run"

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "pwrite", full)
    with pytest.raises(checkpoint.LockError) as e:
        checkpoint.lock_run(str(folder))
    assert str(e.value) == f"cannot write {folder / checkpoint.LOCK_NAME}: No space left on device"
    assert list(tmp_path.iterdir()) == []
