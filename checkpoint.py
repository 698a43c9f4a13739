"""Run folders and checkpoints of train.py: files that are whole or absent, checkpoints
that are verified before use, and one run per folder.

Not a part of the DCM method (Zhang et al., arXiv 2508.09697); the bookkeeping that
lets a long noisy-label run be interrupted, preempted and resumed without losing or
mixing results (README, "Outputs and results").

    lock = lock_run("runs/x")                       # exclusive; LockError names the holder
    save_checkpoint("runs/x/checkpoint.pt", state)  # payload + sha256 sidecar, atomically
    state = load_checkpoint("runs/x/checkpoint.pt") # verified, torch.load(weights_only=True)
    unlock_run(lock)
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from typing import NamedTuple, Optional

import torch

SUM_SUFFIX = ".sha256"   # checkpoint.pt.sha256: the sha256 (hex) of the payload(s) valid for it
LOCK_NAME = ".lock"      # DIR/.lock: "pid host" of the run holding DIR


class CheckpointError(Exception):
    """A checkpoint that cannot be written or trusted; the message is one line."""


class LockError(Exception):
    """The run folder cannot be locked or written; the message is one line."""


class LockHeld(LockError):
    """The run folder is locked by another live process; the message names it."""


def one_line(e):
    """An exception as one line: its strerror or first line, without the traceback."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


# ----------------------------------------------------------------------------- Atomic files

def atomic_write(path, write):
    """Write via a temp file, fsync and os.replace: a crash or a full disk never leaves
    half a file, and the previous version stays intact until the new one is complete."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:   # name the file the user knows, not the temp file
        raise OSError(e.errno, e.strerror or str(e), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, w)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1))


def write_jsonl(path, rows):
    """One JSON object per line (metrics.jsonl)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- Checkpoints

def read_sums(path):
    """The hex digests listed in the sidecar of checkpoint `path`; None when it has none (no
    sidecar, or an empty one: a disk that filled up while writing it), as for a missing sidecar."""
    try:
        with open(path + SUM_SUFFIX) as f:
            return [line.split()[0] for line in f if line.strip()] or None
    except FileNotFoundError:
        return None


def save_checkpoint(path, state):
    """torch.save(state) to `path` with its sha256 in `path`.sha256, as a pair.

    Order: payload to a temp file; sidecar listing the new digest AND those it listed;
    os.replace of the payload; sidecar with the new digest only. A crash between any
    two steps leaves a payload whose digest the sidecar lists, so a kill -9 never makes
    a good checkpoint look corrupt. Raises CheckpointError (one line) on a write error,
    e.g. a full disk; the previous checkpoint is then intact.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        new = sha256_file(tmp)
        # Every digest the sidecar lists, not only the first: after a kill between the two
        # sidecar writes the first one names a payload that never replaced `path`.
        old = [d for d in (read_sums(path) or []) if d != new] if os.path.exists(path) else []
        write_text(path + SUM_SUFFIX, "".join(f"{s}  {os.path.basename(path)}\n" for s in [new] + old))
        os.replace(tmp, path)
        write_text(path + SUM_SUFFIX, f"{new}  {os.path.basename(path)}\n")
    except (OSError, RuntimeError) as e:   # torch's zip writer reports a full disk as RuntimeError
        kept = "the previous checkpoint is intact" if os.path.exists(path) else "no earlier checkpoint is there"
        raise CheckpointError(f"cannot write {path}: {one_line(e)}{_disk_note(path)}; {kept}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _disk_note(path):
    """' (the disk is full: N bytes free)' when that is the likely cause of a failed write, else ''."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return ""
    return f" (the disk is full: {free} bytes free)" if free < (64 << 20) else ""


def verify_checkpoint(path):
    """Compare `path` with its sidecar. -> True (verified) or False (no sidecar: deleted, or a
    run killed between the two files). Raises CheckpointError on a mismatch."""
    sums = read_sums(path)
    if sums is None:
        return False
    digest = sha256_file(path)
    if digest not in sums:
        raise CheckpointError(f"{path} is corrupt or was changed after it was written "
                              f"(sha256 {digest[:12]}..., {os.path.basename(path)}{SUM_SUFFIX} expects {sums[0][:12]}...)")
    return True


def load_checkpoint(path, device="cpu"):
    """Verified load. -> (state, verified). torch.load(weights_only=True): a checkpoint
    holds only tensors, numbers, strings, lists and dicts, so loading someone else's
    file never executes code. Raises CheckpointError (one line)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        verified = verify_checkpoint(path)
        return torch.load(path, map_location=device, weights_only=True), verified
    except CheckpointError:  # a checksum mismatch: its message already says what is wrong
        raise
    except Exception as e:  # damaged bytes can fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(e)}; it is corrupt or not a train.py checkpoint") from None


# ----------------------------------------------------------------------------- Replacing a run (--overwrite)

REPLACED = "replaced"   # --overwrite: DIR/replaced/ holds the old run until the new one finishes
NONFINITE = "nonfinite.json"   # a run stopped on a non-finite loss: its --resume may change --lr / --grad-clip
RUN_FILES = ("config.json", "noise_report.json", "metrics.jsonl", "final.json", "checkpoint.pt",
             "checkpoint.pt" + SUM_SUFFIX, "masks", NONFINITE)


def finished(folder):
    """Whether the run in folder wrote its final.json (its last file). A checkpoint at the last
    epoch without it (killed, or a full disk, between the two writes) is a run to finish."""
    return os.path.exists(os.path.join(folder, "final.json"))


def holds_run(folder):
    """Whether folder holds a run: results of its own (own_results) or, in DIR/replaced/, the
    run an --overwrite set aside (nothing but another --overwrite may delete that one)."""
    return own_results(folder) or os.path.isdir(os.path.join(folder, REPLACED))


def own_results(folder):
    """Whether folder itself holds a run's results: a checkpoint, a final.json or an epoch in
    metrics.jsonl (a config.json alone is a run that stopped before its first checkpoint)."""
    def present(name):
        path = os.path.join(folder, name)
        return os.path.exists(path) and (name != "metrics.jsonl" or os.path.getsize(path) > 0)
    return any(present(name) for name in ("checkpoint.pt", "final.json", "metrics.jsonl"))


def recover_aside(out):
    """An --overwrite killed after setting the old run aside and before its own first checkpoint
    leaves DIR/replaced/ and no results of its own: put the old run back. -> whether it did."""
    if os.path.isdir(os.path.join(out, REPLACED)) and not own_results(out):
        restore_aside(out)
        return True
    return False


def set_aside(out):
    """--overwrite: move the old run's files into DIR/replaced/. A replaced/ that is already
    there holds a run an earlier --overwrite set aside and never finished replacing: when
    DIR has no final.json, DIR holds that unfinished replacement, so replaced/ stays (it is
    the last good run) and DIR's files go; when DIR is finished, replaced/ is stale and goes."""
    aside = os.path.join(out, REPLACED)
    if os.path.isdir(aside):
        if not finished(out):
            _remove_run_files(out)
            return
        shutil.rmtree(aside)
    os.makedirs(aside)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(out, name)):
            os.replace(os.path.join(out, name), os.path.join(aside, name))


def drop_aside(out):
    """The replacing run finished: the old run's files go."""
    shutil.rmtree(os.path.join(out, REPLACED), ignore_errors=True)


def restore_aside(out):
    """A replacing run that failed: put the old run's files back."""
    aside = os.path.join(out, REPLACED)
    if not os.path.isdir(aside):
        return
    _remove_run_files(out)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(aside, name)):
            os.replace(os.path.join(aside, name), os.path.join(out, name))
    shutil.rmtree(aside)


def _remove_run_files(out):
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


# ----------------------------------------------------------------------------- The run-folder lock

class Lock(NamedTuple):
    """A held run-folder lock. fd: the flock'ed lock file; made: the outermost folder lock_run
    created for it (folder or a missing parent; unlock_run removes them again when left
    empty), else None; stale: 'pid host' of a previous holder that died without releasing
    it, else None."""
    folder: str
    fd: int
    made: Optional[str]
    stale: Optional[str]


def make_folder(folder):
    """os.makedirs with one-line LockError for the usual mistakes. -> the outermost folder
    it created (folder itself, or a parent that was missing too), or None."""
    if os.path.isdir(folder):
        return None
    top = os.path.abspath(folder)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    try:
        os.makedirs(folder)
        return top
    except FileExistsError:
        if os.path.isdir(folder):   # another run made it between the check and makedirs: not ours
            return None
        raise LockError(f"--out {folder} exists and is not a folder") from None
    except NotADirectoryError:
        raise LockError(f"--out {folder}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise LockError(f"cannot create --out {folder}: {one_line(e)}") from None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run(folder):
    """Create `folder` if needed and hold DIR/.lock exclusively (flock: the kernel drops it
    when the process dies, so a kill -9 never leaves the folder locked; the file then still
    names the dead pid, reported as `stale`). -> Lock. Raises LockError naming the holder."""
    made = make_folder(folder)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _cleanup(folder, made)
            raise LockError(f"cannot write to --out {folder}: {one_line(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(f"--out {folder} is in use by a running train.py ({_holder(holder)}, lock {path}); "
                            f"wait for it or choose another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:   # released and unlinked between our open and flock
            same = False
        if same:
            break
        os.close(fd)
    previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
    stale = previous if previous and not _is_self(previous) else None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as e:   # a full disk: give the folder back as it was, name the file
        unlock_run(Lock(folder, fd, made, stale))
        raise LockError(f"cannot write {path}: {one_line(e)}") from None
    _remove_temp_files(folder)
    return Lock(folder, fd, made, stale)


def _remove_temp_files(folder):
    """The half-written temp files (NAME.tmp<pid>, atomic_write/save_checkpoint) a killed run
    left in its folder: with the lock held no other process writes there, so all are dead."""
    for sub in (folder, os.path.join(folder, "masks")):
        try:
            names = os.listdir(sub)
        except OSError:
            continue
        for name in names:
            if re.fullmatch(r".+\.tmp\d+", name):
                try:
                    os.remove(os.path.join(sub, name))
                except OSError:
                    pass


def _holder(text):
    """The 'pid host' text of a lock file, for a message: 'pid 19009 on host vm'."""
    pid, _, host = text.strip().partition(" ")
    if not pid:
        return "another process"
    return f"pid {pid} on host {host.strip()}" if host.strip() else f"pid {pid}"


def _is_self(text):
    parts = text.split()
    return len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1] == socket.gethostname()


def stale_message(lock):
    """One line describing a stale lock taken over, or None."""
    if lock.stale is None:
        return None
    pid, _, host = lock.stale.partition(" ")
    dead = host != socket.gethostname() or not pid.isdigit() or not _alive(int(pid))
    state = "which is no longer running" if dead else "which no longer holds it"
    return f"{lock.folder}/{LOCK_NAME} was left by {_holder(lock.stale)}, {state}; taking the folder over"


def _cleanup(folder, made):
    """Remove folder and the parents make_folder created for it, up to `made`, each only if
    empty: a failed start leaves no trace."""
    if not made:
        return
    path = os.path.abspath(folder)
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if len(path) <= len(made):   # made itself removed: stop there
            return
        path = os.path.dirname(path)


def unlock_run(lock):
    """Release: unlink the lock file (while still holding it), close, and remove the
    folder if lock_run created it and nothing was written into it."""
    path = os.path.join(lock.folder, LOCK_NAME)
    try:
        if os.stat(path).st_ino == os.fstat(lock.fd).st_ino:
            os.unlink(path)
    except OSError:
        pass
    os.close(lock.fd)
    _cleanup(lock.folder, lock.made)


# ----------------------------------------------------------------------------- Run names

NAME_BASE = ("dataset", "head", "loss", "noise", "noise_rate", "seed")   # runs/<dataset>-<head>-<loss>-<noise><rate>-s<seed>
# (with --noise none and the default rate, <rate> is left out: cifar10n-dfc-ce-none-s0)
# Flags that cannot change a run's results (where it goes, how fast, what is printed or saved aside).
NAME_IGNORED = {"out", "resume", "auto_resume", "extend", "overwrite", "stop_after", "device", "threads", "download", "mirror",
                "decode_workers", "compile", "train_eval_every", "save_masks", "track_grad_error", "list_presets"}
# Flags whose effect is already in the name: --preset NAME puts the preset's flags into argv
# (presets.expand), and those that differ from their defaults get their own tokens.
# config.json still records the preset.
NAME_REDUNDANT = {"preset"}
# Readable token prefixes; a flag not listed here is named by its own flag name.
SHORT = {"backbone": "", "method": "", "optimizer": "", "noise_sampling": "", "epochs": "ep", "batch_size": "bs",
         "limit_train": "n", "limit_test": "ntest", "val_frac": "val", "keep": "keep", "dcm_scope": "scope-",
         "dcm_interval": "every", "dcm_warmup": "warm", "dcm_stats": "stats-", "dcm_eval": "eval-",
         "dcm_freeze": "freeze", "lr": "lr", "momentum": "mom", "weight_decay": "wd", "schedule": "sched-",
         "grad_clip": "clip", "kan_grid": "grid", "kan_order": "order", "forget_rate": "tau", "augment": "aug-",
         "noise_include_true": "incl", "amp": "amp", "loss_arg": "", "image_size": "px", "samples_per_epoch": "spe",
         "subset_once": "once", "noisy_labels": "", "dcm_score": "score-", "head_dropout": "hdrop"}
PATH_FLAGS = {"data_dir", "noisy_labels_file", "pretrained", "train_list", "test_list", "imagenet_val_dir"}
NAME_MAX = 60   # characters of readable tokens; the rest of the differing flags go into a hash suffix


def _token(key, value):
    """'keep', 0.3 -> 'keep0.3'; a True switch -> its name; lists joined by ','."""
    prefix = SHORT.get(key, key.replace("_", "-") + "=")
    if value is True:
        return prefix.rstrip("=-") or key.replace("_", "-")
    text = ",".join(map(_fmt, value)) if isinstance(value, (list, tuple)) else _fmt(value)
    return "".join(c if c.isalnum() or c in ".,=+-" else "_" for c in prefix + text)


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def default_run_name(config, defaults):
    """Folder name of a run without --out: the base name, then a token per other flag that
    differs from its default (parser order; not --preset, whose flags have their own tokens,
    nor the NAME_IGNORED ones), readable up to NAME_MAX characters; the
    flags that do not fit (and paths) go into a '-h' + 8 hex digits suffix, so two
    configurations never share a name.
    config, defaults: {flag dest: value} (vars of the parsed and the default args)."""
    c = config
    rate = _fmt(float(c["noise_rate"]))
    if c["noise"] == "none" and c["noise_rate"] == defaults.get("noise_rate"):
        rate = ""   # --noise none ignores the rate: named only when it is not the default
    noise = f"{c['noise']}{rate}"
    name = f"{c['dataset']}-{c['head']}-{c['loss']}-{noise}-s{c['seed']}"
    differ = [k for k in config if k not in NAME_BASE and k not in NAME_IGNORED and k not in NAME_REDUNDANT
              and config[k] != defaults.get(k)]
    readable, hashed = [], {}
    for k in differ:
        tok = None if k in PATH_FLAGS else _token(k, config[k])
        if tok is not None and len("-".join(readable + [tok])) <= NAME_MAX:
            readable.append(tok)
        else:
            hashed[k] = config[k]
    if hashed:
        blob = json.dumps(sorted(hashed.items()), default=str).encode()
        readable.append("h" + hashlib.sha256(blob).hexdigest()[:8])
    return "-".join([name] + readable)


def claim_run_dir(base, fresh):
    """Lock the run folder. fresh=False: exactly `base`. fresh=True (a new run under a
    default name): the first of base, base-2, base-3... that holds no run (holds_run) and is
    not locked by a running process, so parallel or repeated runs never share a folder.
    -> (folder, Lock). Raises LockError (one line)."""
    if not fresh:
        return base, lock_run(base)
    k = 1
    while True:
        out = base if k == 1 else f"{base}-{k}"
        k += 1
        if holds_run(out):
            continue
        try:
            lock = lock_run(out)
        except LockHeld:
            continue
        if not holds_run(out):   # written before we got the lock
            return out, lock
        unlock_run(lock)
