"""Run-folder policy of train.py: which folder a run takes, when it may resume or extend,
what its checkpoint holds and what its config.json records. The file mechanics (atomic
writes, checksums, locks) are in checkpoint.py. Not a part of the DCM method; the
bookkeeping that lets a long run be preempted and resumed (README, "Outputs and results").

    out, lock, ck = open_run(args, typed, defaults, device, dd)    # locked on rank 0; ck: the checkpoint to resume
    log = RunLog.start(args, ck)                  # flags, metrics rows, best epochs, --extend entries
    checkpoint.save_checkpoint(path, checkpoint_state(st, epoch, log))  # st: a TrainState
"""
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

import checkpoint
import diagnostics
import distributed
import train_cli

CKPT_IGNORED = {"epochs", "resume", "auto_resume", "extend", "out", "stop_after", "device", "compile", "overwrite",
                "threads", "decode_workers", "train_eval_every"}


@dataclass
class TrainState:
    """What train.py's steps change, the same on every rank: the method's networks (two for
    co-teaching; a DCM head keeps its mask schedule in its buffers), their optimizers, the step
    count, the ELR memory. checkpoint_state saves it and restore_state loads it back."""
    nets: list                           # nets.Net per network
    opts: list                           # torch.optim optimizer per network
    y_noisy: torch.Tensor                # (N,) the training labels the run drew (checked on resume)
    dist: distributed.Dist
    step: int = 0                        # optimizer steps taken
    elr_t: Optional[torch.Tensor] = None  # (n_ids, C) ELR targets (--method elr), else None
    elr_hp: Optional[dict] = None        # ELR's {"beta", "lam"}
    stop: Optional[train_cli.StopFlag] = None  # set by the stop-signal handler


@dataclass
class RunLog:
    """What a run has recorded so far, saved with every checkpoint: the flags, one metrics
    row per finished epoch, the best epochs (diagnostics.update_best: "acc", "epoch", and
    with --val-frac "val_acc", "val_epoch", "test_at_val") and the --extend entries."""
    config: dict                         # the flags, vars(args)
    history: list = field(default_factory=list)  # metrics.jsonl rows, one per epoch
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})
    extended: list = field(default_factory=list)  # {"at_epoch", "epochs_before", "epochs_after"} per --extend

    @classmethod
    def start(cls, args, ck):
        """A new run's empty log, or a resumed one's from its checkpoint ck (plus this --extend)."""
        if ck is None:
            return cls(dict(vars(args)))
        return cls(dict(vars(args)), ck["history"], ck["best"], extended_history(args, ck))

    def add(self, row):
        """Record one epoch's metrics row."""
        self.best = diagnostics.update_best(self.best, row)
        self.history.append(row)


def checkpoint_state(st, epoch, log):
    """What checkpoint.pt holds (st: a TrainState, log: a RunLog): only tensors, numbers,
    strings, lists and dicts, so that checkpoint.load_checkpoint can use torch.load(weights_only=True)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"config": log.config, "epoch": epoch, "step": st.step, "history": log.history, "best": log.best,
            "nets": [n.state_dict() for n in st.nets], "opts": [o.state_dict() for o in st.opts],
            "elr_t": st.elr_t, "y_noisy": st.y_noisy,
            "rng": rng, "extended": list(log.extended)}


def load_checkpoint(path, device):
    """Verified checkpoint.load_checkpoint; UserError (one line) when missing or corrupt."""
    try:
        ck, verified = checkpoint.load_checkpoint(path, device)
    except checkpoint.CheckpointError as e:
        raise train_cli.UserError(f"{e}; resume from another run or start a new --out") from None
    if not verified:
        train_cli.warn(f"{path} has no {checkpoint.SUM_SUFFIX} checksum (deleted, or never written: a run killed between the two files); loaded unverified")
    ok = isinstance(ck, dict) and isinstance(ck.get("config"), dict) and isinstance(ck["config"].get("epochs"), int) \
        and isinstance(ck.get("epoch"), int)
    if not ok:
        raise train_cli.UserError(f"{path} is not a train.py checkpoint (no config with epochs, or no epoch); "
                                  f"resume from another run or start a new --out")
    return ck


# What restore_state reads, and its type: a checkpoint of another version or program is refused in one line.
PAYLOAD = {"step": int, "history": list, "best": dict, "nets": list, "opts": list,
           "y_noisy": torch.Tensor, "rng": dict}


def check_payload(ck):
    """UserError (one line) unless ck has what restore_state needs, in the right types."""
    bad = [k for k, t in PAYLOAD.items() if not isinstance(ck.get(k), t)]
    if bad:
        raise train_cli.UserError(f"--resume: the checkpoint lacks or has another form of {', '.join(bad)} "
                                  f"(written by another version of train.py?); start a new --out")


def default_out(args, defaults):
    """runs/<name> for a run without --out (checkpoint.default_run_name); defaults: the
    parser's {dest: default}, so only flags that differ from them name the run."""
    return os.path.join("runs", checkpoint.default_run_name(vars(args), defaults))


def claim_out(args, defaults):
    """The run folder, locked. -> (out, Lock). A new run under a default name takes the
    first free runs/<name>[-k]; --out, --resume and --auto-resume take exactly that folder."""
    fresh = not args.out and not args.resume and not args.auto_resume
    try:
        out, lock = checkpoint.claim_run_dir(args.out or default_out(args, defaults), fresh)
    except checkpoint.LockError as e:
        raise train_cli.UserError(str(e)) from None
    msg = checkpoint.stale_message(lock)
    if msg:
        train_cli.warn(msg)
    return out, lock


def resolve_resume(args, typed, out, device):
    """--resume / --auto-resume: -> the checkpoint (a takes its saved config) or None
    (--auto-resume on a folder with no checkpoint: a fresh start). Raises UserError for
    flags that contradict the saved run, and for a run already finished or a different
    --epochs without --extend (a silently stitched LR schedule)."""
    path = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(path):
        if args.auto_resume:
            return None
        raise train_cli.UserError(f"--resume: no checkpoint at {path}; start the run without --resume")
    ck = load_checkpoint(path, device)
    saved = ck["config"]
    keys = (set(saved) & set(vars(args))) - CKPT_IGNORED
    compare = keys if args.auto_resume else keys & typed
    clash = sorted(k for k in compare if saved.get(k) != getattr(args, k))
    if args.auto_resume and saved["epochs"] != args.epochs:
        clash.append("epochs")
    if clash:
        was = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in clash)
        how = "use another --out, or --overwrite" if args.auto_resume else "drop them or start a new --out"
        raise train_cli.UserError(f"--{'auto-' if args.auto_resume else ''}resume: flags contradict the saved run in {out} ({was}); {how}")
    for k in keys:
        setattr(args, k, saved[k])
    check_epochs(args, typed, ck, out)
    return ck


def check_epochs(args, typed, ck, out):
    """--epochs on --resume: the saved target unless --extend asks for a larger one."""
    saved, done = ck["config"]["epochs"], ck["epoch"]
    if "epochs" not in typed or args.auto_resume:
        args.epochs = saved
    if args.extend:
        if args.epochs <= saved:
            raise train_cli.UserError(f"--extend: --epochs must exceed the run's {saved} epochs, got {args.epochs}")
    elif args.epochs != saved:
        raise train_cli.UserError(f"--resume: {out} was started for {saved} epochs (its LR schedule spans them); "
                        f"add --extend to train to {args.epochs}, or drop --epochs")
    elif done >= saved and not args.auto_resume and checkpoint.finished(out):
        raise train_cli.UserError(f"--resume: {out} already finished its {saved} epochs; "
                        f"add --extend --epochs N (N > {saved}) to train longer")


def resume_record(out, meta, ck, args):
    """config.json of a resumed run: the original file, plus a `resumed` entry per resume
    and an `extended` entry per --extend (the original values are never rewritten silently)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = dict(meta)
    entry = dict(at_epoch=ck["epoch"], device_used=meta["device_used"], world_size=meta["world_size"])
    cfg["resumed"] = cfg.get("resumed", []) + [entry]
    if args.extend:
        cfg["extended"] = cfg.get("extended", []) + [dict(at_epoch=ck["epoch"], epochs_before=ck["config"]["epochs"],
                                                          epochs_after=args.epochs)]
        cfg["epochs"] = args.epochs
    return cfg


def initial_files(args, out, ck, meta, d, st, log):
    """Rank 0, before the first epoch: config.json, noise_report.json (d: a data.TrainData), metrics.jsonl
    and, for a new run, the epoch-0 checkpoint of st (a TrainState). --overwrite first moves the old run to DIR/replaced/."""
    if ck is None and args.overwrite:
        checkpoint.set_aside(out)
    checkpoint.write_json(os.path.join(out, "config.json"), meta if ck is None else resume_record(out, meta, ck, args))
    checkpoint.write_json(os.path.join(out, "noise_report.json"), d.report)
    checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), log.history)
    if ck is None:
        checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), checkpoint_state(st, 0, log))


def open_run(args, typed, defaults, device, dd):
    """The run folder (locked on rank 0) and, for --resume/--auto-resume, its checkpoint.
    -> (out, lock or None, checkpoint or None). The lock is released when this raises.
    dd: a distributed.Dist. Rank 0 claims the folder and sends it to the other ranks, which take
    that one (a default name may have become runs/<name>-2); when rank 0's claim fails it sends
    None and the others raise PeerFailed, so no rank waits on a broadcast that never comes."""
    try:
        out, lock = claim_out(args, defaults) if dd.rank == 0 else (None, None)
    except BaseException:
        distributed.from_rank0(None, dd)   # the other ranks wait for the folder: tell them there is none
        raise
    try:
        out = distributed.from_rank0(out, dd)
        if out is None:   # rank 0's claim failed; it reports why
            raise train_cli.PeerFailed()
        ck = resolve_resume(args, typed, out, device) if (args.resume or args.auto_resume) else None
        if ck is None and checkpoint.holds_run(out) and not args.overwrite:
            raise train_cli.UserError(f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out")
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise
    return out, lock, ck


def restore_state(st, ck, y_noisy, device):
    """Load a checkpoint into st, a TrainState (nets with their DCM heads' schedules, opts, step, ELR memory; and the CPU RNG),
    the inverse of checkpoint_state. y_noisy: (N,) the labels this run drew; they must be the saved ones.
    A checkpoint whose networks do not fit this run's is refused (UserError) before anything is loaded."""
    check_payload(ck)
    saved = ck["nets"]
    check_fits(st.nets, saved)
    for net, sd in zip(st.nets, saved):
        net.load_state_dict(sd)
    for opt, sd in zip(st.opts, ck["opts"]):
        opt.load_state_dict(sd)
    st.step, st.elr_t = ck["step"], ck["elr_t"]
    if not torch.equal(ck["y_noisy"].to(device), y_noisy):
        raise train_cli.UserError("--resume: the noisy labels differ from the saved run's (data or noise flags changed)")
    torch.set_rng_state(ck["rng"]["cpu"].cpu())


def check_fits(networks, saved):
    """UserError (one line) naming the first difference between this run's networks and the
    saved state dicts: their number, a parameter or buffer name, or a shape."""
    if len(networks) != len(saved):
        raise train_cli.UserError(f"--resume: the checkpoint holds {len(saved)} network(s), this run builds "
                                  f"{len(networks)} (another --method?)")
    for net, sd in zip(networks, saved):
        own = net.state_dict()
        for key in sorted(set(own) | set(sd)):
            if key not in own or key not in sd or own[key].shape != sd[key].shape:
                was = tuple(sd[key].shape) if key in sd else "absent"
                now = tuple(own[key].shape) if key in own else "absent"
                raise train_cli.UserError(f"--resume: the checkpoint's networks do not fit this run's: {key} is {was} "
                                          f"in the checkpoint, {now} here (another --head, --backbone or code version?)")


def run_meta(config, out, dd, device, loss_hparams, n_train):
    """config.json of a new run: the flags plus where and with what it ran."""
    return dict(config, out=out, world_size=dd.world, device_used=str(device), torch=torch.__version__,
                numpy=np.__version__, python=sys.version.split()[0], loss_hparams=loss_hparams, n_train=n_train)


def extended_history(args, ck):
    """The checkpoint's list of --extend entries, plus this one with --extend."""
    extended = list(ck.get("extended", [])) if ck else []
    if args.extend:
        extended.append({"at_epoch": ck["epoch"], "epochs_before": ck["config"]["epochs"], "epochs_after": args.epochs})
    return extended
