"""Run-folder policy of train.py: which folder a run takes, when it may resume or extend,
what its checkpoint holds and what its config.json records. The file mechanics (atomic
writes, checksums, locks) are in checkpoint.py. Not a part of the DCM method; the
bookkeeping that lets a long run be preempted and resumed (README, "Outputs and results").

    out, lock, ck = open_run(a, typed, defaults, device, rank)  # locked; ck: the checkpoint to resume
    checkpoint.save_checkpoint(path, checkpoint_state(st, epoch, history, best, config))
"""
import json
import os
import sys

import numpy as np
import torch

import checkpoint
import dcm_ref
import train_cli

CKPT_IGNORED = {"epochs", "resume", "auto_resume", "extend", "out", "stop_after", "device", "compile", "overwrite",
                "threads", "decode_workers", "train_eval_every"}


def checkpoint_state(st, epoch, history, best, config, extended=()):
    """What checkpoint.pt holds: only tensors, numbers, strings, lists and dicts, so that
    checkpoint.load_checkpoint can use torch.load(weights_only=True). best: {"acc", "epoch",
    "val_acc", "val_epoch", "test_at_val"}; extended: the --extend history."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"config": config, "epoch": epoch, "step": st["step"], "history": history, "best": best,
            "nets": [n.state_dict() for n in st["nets"]], "opts": [o.state_dict() for o in st["opts"]],
            "masks": [dict(m._asdict()) for m in st["masks"]], "elr_t": st["elr_t"], "y_noisy": st["y_noisy"],
            "rng": rng, "extended": list(extended)}


def load_checkpoint(path, device):
    """Verified checkpoint.load_checkpoint; UserError (one line) when missing or corrupt."""
    try:
        ck, verified = checkpoint.load_checkpoint(path, device)
    except checkpoint.CheckpointError as e:
        raise train_cli.UserError(f"{e}; resume from another run or start a new --out") from None
    if not verified:
        train_cli.warn(f"{path} has no {checkpoint.SUM_SUFFIX} checksum (written before train.py kept one); loaded unverified")
    return ck


def default_out(a, defaults):
    """runs/<name> for a run without --out (checkpoint.default_run_name); defaults: the
    parser's {dest: default}, so only flags that differ from them name the run."""
    return os.path.join("runs", checkpoint.default_run_name(vars(a), defaults))


def claim_out(a, defaults):
    """The run folder, locked. -> (out, Lock). A new run under a default name takes the
    first free runs/<name>[-k]; --out, --resume and --auto-resume take exactly that folder."""
    fresh = not a.out and not a.resume and not a.auto_resume
    try:
        out, lock = checkpoint.claim_run_dir(a.out or default_out(a, defaults), fresh)
    except checkpoint.LockError as e:
        raise train_cli.UserError(str(e)) from None
    msg = checkpoint.stale_message(lock)
    if msg:
        train_cli.warn(msg)
    return out, lock


def resolve_resume(a, typed, out, device):
    """--resume / --auto-resume: -> the checkpoint (a takes its saved config) or None
    (--auto-resume on a folder with no checkpoint: a fresh start). Raises UserError for
    flags that contradict the saved run, and for a run already finished or a different
    --epochs without --extend (a silently stitched LR schedule)."""
    path = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(path):
        if a.auto_resume:
            return None
        raise train_cli.UserError(f"--resume: no checkpoint at {path}; start the run without --resume")
    ck = load_checkpoint(path, device)
    saved = ck["config"]
    keys = (set(saved) & set(vars(a))) - CKPT_IGNORED
    compare = keys if a.auto_resume else keys & typed
    clash = sorted(k for k in compare if saved.get(k) != getattr(a, k))
    if a.auto_resume and saved["epochs"] != a.epochs:
        clash.append("epochs")
    if clash:
        was = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in clash)
        how = "use another --out, or --overwrite" if a.auto_resume else "drop them or start a new --out"
        raise train_cli.UserError(f"--{'auto-' if a.auto_resume else ''}resume: flags contradict the saved run in {out} ({was}); {how}")
    for k in keys:
        setattr(a, k, saved[k])
    check_epochs(a, typed, ck, out)
    return ck


def check_epochs(a, typed, ck, out):
    """--epochs on --resume: the saved target unless --extend asks for a larger one."""
    saved, done = ck["config"]["epochs"], ck["epoch"]
    if "epochs" not in typed or a.auto_resume:
        a.epochs = saved
    if a.extend:
        if a.epochs <= saved:
            raise train_cli.UserError(f"--extend: --epochs must exceed the run's {saved} epochs, got {a.epochs}")
    elif a.epochs != saved:
        raise train_cli.UserError(f"--resume: {out} was started for {saved} epochs (its LR schedule spans them); "
                        f"add --extend to train to {a.epochs}, or drop --epochs")
    elif done >= saved and not a.auto_resume:
        raise train_cli.UserError(f"--resume: {out} already finished its {saved} epochs; "
                        f"add --extend --epochs N (N > {saved}) to train longer")


def resume_record(out, meta, ck, a):
    """config.json of a resumed run: the original file, plus a `resumed` entry per resume
    and an `extended` entry per --extend (the original values are never rewritten silently)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = dict(meta)
    entry = dict(at_epoch=ck["epoch"], device_used=meta["device_used"], world_size=meta["world_size"])
    cfg["resumed"] = cfg.get("resumed", []) + [entry]
    if a.extend:
        cfg["extended"] = cfg.get("extended", []) + [dict(at_epoch=ck["epoch"], epochs_before=ck["config"]["epochs"],
                                                          epochs_after=a.epochs)]
        cfg["epochs"] = a.epochs
    return cfg


def initial_files(a, out, ck, meta, d, st, history, best, config):
    """Rank 0, before the first epoch: config.json, noise_report.json, metrics.jsonl and, for a
    new run, the epoch-0 checkpoint. --overwrite first moves the old run to DIR/replaced/."""
    if ck is None and a.overwrite:
        checkpoint.set_aside(out)
    checkpoint.write_json(os.path.join(out, "config.json"), meta if ck is None else resume_record(out, meta, ck, a))
    checkpoint.write_json(os.path.join(out, "noise_report.json"), d["report"])
    checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), history)
    if ck is None:
        checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), checkpoint_state(st, 0, history, best, config))


def open_run(a, typed, defaults, device, rank):
    """The run folder (locked on rank 0) and, for --resume/--auto-resume, its checkpoint.
    -> (out, lock or None, checkpoint or None). The lock is released when this raises."""
    out, lock = claim_out(a, defaults) if rank == 0 else (a.out or default_out(a, defaults), None)
    try:
        ck = resolve_resume(a, typed, out, device) if (a.resume or a.auto_resume) else None
        if ck is None and os.path.exists(os.path.join(out, "checkpoint.pt")) and not a.overwrite:
            raise train_cli.UserError(f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out")
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise
    return out, lock, ck


def restore_state(st, ck, y_noisy, device):
    """Load a checkpoint into the run state st (nets, opts, masks, step, ELR memory, CPU RNG),
    the inverse of checkpoint_state. y_noisy: (N,) the labels this run drew; they must be the saved ones.
    A checkpoint whose networks do not fit this run's is refused (UserError) before anything is loaded."""
    check_fits(st["nets"], ck["nets"])
    for net, sd in zip(st["nets"], ck["nets"]):
        net.load_state_dict(sd)
    for opt, sd in zip(st["opts"], ck["opts"]):
        opt.load_state_dict(sd)
    st["masks"] = [dcm_ref.MaskState(**m) for m in ck["masks"]]
    st["step"], st["elr_t"] = ck["step"], ck["elr_t"]
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


def extended_history(a, ck):
    """The checkpoint's list of --extend entries, plus this one with --extend."""
    extended = list(ck.get("extended", [])) if ck else []
    if a.extend:
        extended.append({"at_epoch": ck["epoch"], "epochs_before": ck["config"]["epochs"], "epochs_after": a.epochs})
    return extended
