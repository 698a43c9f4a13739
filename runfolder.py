"""Run-folder policy of train.py: which folder a run takes, when it may resume or extend,
what its checkpoint holds and what its config.json records. The file mechanics (atomic
writes, checksums, locks) are in checkpoint.py. Not a part of the DCM method; the
bookkeeping that lets a long run be preempted and resumed (README, "Outputs and results").

    with Session(dd) as run:                      # train.train's harness: signals, lock, the run's files
        config = run.open(config, typed, defaults, device)   # config: the flags, vars(args); a resume's saved ones
        run.begin(st, d, loss_config, device)     # st: a TrainState; config.json, ..., the epoch-0 checkpoint
        code = run.end_epoch(row, t0, speed)      # the metrics row: checkpoint, metrics.jsonl, its line; a stop
        return run.finish(d)                      # final.json and the last line
    out, lock, ck, config = open_run(config, typed, defaults, device, dd)  # locked on rank 0; ck: the checkpoint to resume
    log = RunLog.start(config, ck)                # flags, metrics rows, best epochs, --extend entries
    checkpoint.save_checkpoint(path, checkpoint_state(st, epoch, log))
"""
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

import checkpoint
import diagnostics
import distributed
import train_cli

RETUNE = {"lr", "grad_clip"}   # what --resume may change after a non-finite loss (resume_record records it)
CKPT_IGNORED = {"epochs", "resume", "auto_resume", "extend", "out", "stop_after", "device", "compile", "overwrite",
                "threads", "decode_workers", "train_eval_every", "download", "mirror"}


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
    config: dict                         # the flags (config.json's, vars(args))
    history: list = field(default_factory=list)  # metrics.jsonl rows, one per epoch
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})
    extended: list = field(default_factory=list)  # {"at_epoch", "epochs_before", "epochs_after"} per --extend

    @classmethod
    def start(cls, config, ck):
        """A new run's empty log, or a resumed one's from its checkpoint ck (plus this --extend).
        config: the run's flags as a dict (vars(args))."""
        if ck is None:
            return cls(dict(config))
        return cls(dict(config), ck["history"], ck["best"], extended_history(config, ck))

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
           "y_noisy": torch.Tensor, "rng": dict, "extended": list}


def check_payload(ck):
    """UserError (one line) unless ck has what restore_state needs, in the right types."""
    bad = [k for k, t in PAYLOAD.items() if not isinstance(ck.get(k), t)]
    if bad:
        raise train_cli.UserError(f"--resume: the checkpoint lacks or has another form of {', '.join(bad)} "
                                  f"(written by another version of train.py?); start a new --out")


def default_out(config, defaults):
    """runs/<name> for a run without --out (checkpoint.default_run_name); config: the flags,
    {dest: value}; defaults: the parser's {dest: default}, so only flags that differ from them name the run."""
    return os.path.join("runs", checkpoint.default_run_name(config, defaults))


def claim_out(config, defaults):
    """The run folder, locked. -> (out, Lock). A new run under a default name takes the
    first free runs/<name>[-k]; --out, --resume and --auto-resume take exactly that folder."""
    c = config
    fresh = not c["out"] and not c["resume"] and not c["auto_resume"]
    try:
        out, lock = checkpoint.claim_run_dir(c["out"] or default_out(c, defaults), fresh)
    except checkpoint.LockError as e:
        raise train_cli.UserError(str(e)) from None
    msg = checkpoint.stale_message(lock)
    if msg:
        train_cli.warn(msg)
    if not c["overwrite"] and checkpoint.recover_aside(out):
        train_cli.warn(f"{out}/{checkpoint.REPLACED}/ held the run an interrupted --overwrite had set aside; "
                       f"it is back in {out}")
    return out, lock


def resolve_resume(config, typed, out, device):
    """--resume / --auto-resume: -> (the checkpoint, the run's flags: config with the saved run's,
    and --epochs by check_epochs), or (None, config) for --auto-resume on a folder with no
    checkpoint (a fresh start). config: the flags, {dest: value}; typed: the dests typed. Raises
    UserError for flags that contradict the saved run, and for a run already finished or a
    different --epochs without --extend (a silently stitched LR schedule)."""
    path, auto = os.path.join(out, "checkpoint.pt"), config["auto_resume"]
    if not os.path.exists(path):
        if auto:
            return None, config
        raise train_cli.UserError(f"--resume: no checkpoint at {path}; start the run without --resume")
    ck = load_checkpoint(path, device)
    saved = ck["config"]
    keys = (set(saved) & set(config)) - CKPT_IGNORED
    retune = RETUNE & typed if os.path.exists(os.path.join(out, checkpoint.NONFINITE)) and not auto else set()
    keys -= retune   # after a non-finite loss: the typed --lr / --grad-clip replace the saved ones
    compare = keys if auto else keys & typed
    clash = sorted(k for k in compare if saved.get(k) != config[k])
    if auto and saved["epochs"] != config["epochs"]:
        clash.append("epochs")
    if clash:
        was = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in clash)
        how = "use another --out, or --overwrite" if auto else "drop them or start a new --out"
        raise train_cli.UserError(f"--{'auto-' if auto else ''}resume: flags contradict the saved run in {out} ({was}); {how}")
    config = dict(config, **{k: saved[k] for k in keys})
    return ck, dict(config, epochs=check_epochs(config, typed, ck, out))


def check_epochs(config, typed, ck, out):
    """--epochs on --resume (config: the flags): -> the saved target, unless --extend asks for a larger one."""
    saved, done, epochs = ck["config"]["epochs"], ck["epoch"], config["epochs"]
    if "epochs" not in typed or config["auto_resume"]:
        epochs = saved
    if config["extend"]:
        if epochs <= saved:
            raise train_cli.UserError(f"--extend: --epochs must exceed the run's {saved} epochs, got {epochs}")
    elif epochs != saved:
        raise train_cli.UserError(f"--resume: {out} was started for {saved} epochs (its LR schedule spans them); "
                        f"add --extend to train to {epochs}, or drop --epochs")
    elif done >= saved and not config["auto_resume"] and checkpoint.finished(out):
        raise train_cli.UserError(f"--resume: {out} already finished its {saved} epochs; "
                        f"add --extend --epochs N (N > {saved}) to train longer")
    return epochs


def resume_record(out, meta, ck):
    """config.json of a resumed run: the original file, plus a `resumed` entry per resume
    and an `extended` entry per --extend (the original values are never rewritten silently).
    meta: this run's run_meta (its flags: extend, epochs)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = dict(meta)
    edited = sorted(k for k, v in ck["config"].items() if k in cfg and cfg[k] != v and k not in CKPT_IGNORED)
    if edited:   # the checkpoint's flags are the run's: say so, and record them
        was = ", ".join(f"--{k.replace('_', '-')} {cfg[k]} (the run's: {ck['config'][k]})" for k in edited[:3])
        train_cli.warn(f"{out}/config.json differs from the run's checkpoint in {was}"
                       f"{' and more' if len(edited) > 3 else ''}; edited by hand? The checkpoint's flags are used "
                       f"and written back")
        cfg.update({k: ck["config"][k] for k in edited})
    entry = dict(at_epoch=ck["epoch"], device_used=meta["device_used"], world_size=meta["world_size"])
    retuned = {k: (ck["config"][k], meta[k]) for k in sorted(RETUNE) if k in meta and meta[k] != ck["config"].get(k, meta[k])}
    if retuned:   # resumed after a non-finite loss with another --lr / --grad-clip
        cfg["retuned"] = cfg.get("retuned", []) + [dict(at_epoch=ck["epoch"], **{k: {"before": b, "after": a}
                                                                                   for k, (b, a) in retuned.items()})]
        cfg.update({k: a for k, (b, a) in retuned.items()})
    cfg["resumed"] = cfg.get("resumed", []) + [entry]
    if meta["extend"]:
        cfg["extended"] = cfg.get("extended", []) + [dict(at_epoch=ck["epoch"], epochs_before=ck["config"]["epochs"],
                                                          epochs_after=meta["epochs"])]
        cfg["epochs"] = meta["epochs"]
    return cfg


def initial_files(out, ck, meta, d, st, log):
    """Rank 0, before the first epoch: config.json (meta: run_meta), noise_report.json (d: a data.TrainData),
    metrics.jsonl and, for a new run, the epoch-0 checkpoint of st (a TrainState). --overwrite first moves
    the old run to DIR/replaced/."""
    if ck is None and meta["overwrite"]:
        checkpoint.set_aside(out)
    checkpoint.write_json(os.path.join(out, "config.json"), meta if ck is None else resume_record(out, meta, ck))
    checkpoint.write_json(os.path.join(out, "noise_report.json"), d.report)
    checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), log.history)
    if ck is None:
        checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), checkpoint_state(st, 0, log))
    elif os.path.exists(os.path.join(out, checkpoint.NONFINITE)):   # used: this resume is the retry
        os.remove(os.path.join(out, checkpoint.NONFINITE))


def open_run(config, typed, defaults, device, dd):
    """The run folder (locked on rank 0) and, for --resume/--auto-resume, its checkpoint.
    config: the flags, {dest: value}; typed: the dests typed; defaults: {dest: default}.
    -> (out, lock or None, checkpoint or None, the run's flags: a resumed run's saved ones, resolve_resume).
    The lock is released when this raises.
    dd: a distributed.Dist. Rank 0 claims the folder and sends it to the other ranks, which take
    that one (a default name may have become runs/<name>-2); when rank 0's claim fails it sends
    None and the others raise PeerFailed, so no rank waits on a broadcast that never comes."""
    try:
        out, lock = claim_out(config, defaults) if dd.rank == 0 else (None, None)
    except BaseException:
        distributed.from_rank0(None, dd)   # the other ranks wait for the folder: tell them there is none
        raise
    try:
        out = distributed.from_rank0(out, dd)
        if out is None:   # rank 0's claim failed; it reports why
            raise train_cli.PeerFailed()
        ck = None
        if config["resume"] or config["auto_resume"]:
            ck, config = resolve_resume(config, typed, out, device)
        if ck is None and checkpoint.holds_run(out) and not config["overwrite"]:
            raise train_cli.UserError(f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out")
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise
    return out, lock, ck, config


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


def extended_history(config, ck):
    """The checkpoint's list of --extend entries, plus this one with --extend (config: the flags)."""
    extended = list(ck["extended"]) if ck else []
    if config["extend"]:
        extended.append({"at_epoch": ck["epoch"], "epochs_before": ck["config"]["epochs"], "epochs_after": config["epochs"]})
    return extended


# ----------------------------------------------------------------------------- The run's harness

def metrics_match(out, history):
    """Whether out/metrics.jsonl parses and holds exactly the rows `history` (a checkpoint's)."""
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()] == history
    except (OSError, ValueError):
        return False


class Session:
    """train.train's harness, a context manager on every rank: SIGINT/SIGTERM caught (stop after
    the current step, resumable), the run folder claimed and locked by rank 0 (open), the run's
    files written by rank 0 (begin, end_epoch, finish), and at the exit the signal handlers
    restored, the folder unlocked and, when a replacing run (--overwrite) failed, the old run
    put back. say: print on rank 0 only (train_cli.make_say)."""

    def __init__(self, dd=distributed.Dist()):
        self.dist, self.lead = dd, dd.rank == 0
        self.say = train_cli.make_say(self.lead)
        self.stop = train_cli.StopFlag()
        self.out = self.lock = self.resumed = self.config = self.log = self.state = None
        self.began = False        # begin() ran: a failure from there on puts a replaced run back

    def __enter__(self):
        self._restore = train_cli.catch_stop_signals(self.stop)
        return self

    def __exit__(self, kind, e, tb):
        try:   # not a stop (Ctrl-C, SIGTERM: resumable, so the old run waits in DIR/replaced/)
            if isinstance(e, Exception) and self.began and self.lead and self.resumed is None and self.config["overwrite"]:
                checkpoint.restore_aside(self.out)
        finally:
            self._restore()
            if self.lock is not None:
                checkpoint.unlock_run(self.lock)
        return False

    def open(self, config, typed, defaults, device):
        """The run folder (open_run; self.out, locked on rank 0) and, for --resume/--auto-resume, its
        checkpoint (self.resumed, else None). config: the flags, vars(args); -> the run's flags
        (a resumed run's saved ones and its --epochs)."""
        self.out, self.lock, self.resumed, self.config = open_run(config, typed, defaults, device, self.dist)
        return self.config

    @property
    def first_epoch(self):
        """The first epoch to train: 1, or the one after the resumed checkpoint's."""
        return (self.resumed["epoch"] if self.resumed else 0) + 1

    def begin(self, st, d, loss_config, device):
        """Before the first epoch, st: the TrainState (its stop flag set), d: the data.TrainData. -> False
        when --auto-resume found the run finished (said so; nothing to do). Else True after the RunLog
        (self.log), rank 0's initial_files (config.json with the loss's hyper-parameters, ...) and the first line."""
        c, out = self.config, self.out
        st.stop, self.state = self.stop, st
        if self.resumed is not None and self.resumed["epoch"] >= c["epochs"] and checkpoint.finished(out):  # --auto-resume
            if self.lead and not metrics_match(out, self.resumed["history"]):   # damaged since: the checkpoint has them
                checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), self.resumed["history"])
                train_cli.warn(f"{out}/metrics.jsonl did not match the run's checkpoint; rewritten from it")
            self.say(f"{out} already finished its {c['epochs']} epochs (--auto-resume): nothing to do")
            return False
        self.log = RunLog.start(c, self.resumed)
        self.began = True
        if self.lead:
            meta = run_meta(self.log.config, out, self.dist, device, loss_config, len(d.y))
            initial_files(out, self.resumed, meta, d, st, self.log)
        self.say(diagnostics.start_line(c, d, device, self.dist, out), flush=True)
        return True

    def end_epoch(self, row, t0, samples_per_s):
        """A finished epoch's metrics row (epoch, lr, ..., train.py's; t0: its start, time.time()) plus seconds,
        samples_per_s and eta_s: recorded in the RunLog, then rank 0 writes the checkpoint (first: metrics.jsonl
        never shows an epoch the checkpoint lacks), metrics.jsonl and the mask (--save-masks), and the epoch's
        line is said. -> None to go on, or the exit code: 130/143 a stop signal, 0 --stop-after."""
        c, out, epoch = self.config, self.out, row["epoch"]
        row.update(seconds=time.time() - t0, samples_per_s=samples_per_s)
        row["eta_s"] = (c["epochs"] - epoch) * row["seconds"]
        self.log.add(row)
        snapshot = checkpoint_state(self.state, epoch, self.log)
        if self.lead:
            if c["save_masks"]:
                diagnostics.save_mask(out, epoch, self.state.nets[0].head.mask)
            checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), snapshot)
            checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), self.log.history)
        self.say(diagnostics.epoch_line(row, c["epochs"]), flush=True)
        if train_cli.stop_requested(self.state) and epoch < c["epochs"]:
            return self.stopped(epoch)
        if c["stop_after"] and epoch >= c["stop_after"] and epoch < c["epochs"]:
            self.say(f"stopped after epoch {epoch} (--stop-after); continue with --out {out} --resume")
            return 0
        return None

    def nonfinite(self, epoch):
        """The run stopped on a non-finite loss after `epoch` (its checkpoint's): rank 0 marks the folder
        (checkpoint.NONFINITE), so a --resume may lower --lr or clip (resolve_resume, resume_record)."""
        if self.lead:
            checkpoint.write_json(os.path.join(self.out, checkpoint.NONFINITE), {"after_epoch": epoch})

    def stopped(self, epoch):
        """A stop signal after `epoch` (the checkpoint's): its one line; -> 130 (SIGINT) or 143 (SIGTERM)."""
        return train_cli.stopped(self.state, self.say, os.path.join(self.out, "checkpoint.pt"), epoch, self.out)

    def finish(self, d):
        """After the last epoch: final.json (diagnostics.final_metrics; d: the data.TrainData) and the last
        line; a run that replaced another (--overwrite) drops the old one. -> 0."""
        out = self.out
        final = diagnostics.final_metrics(self.log.history, self.log.best, d, self.config["epochs"])
        train_cli.on_rank0(lambda: checkpoint.write_json(os.path.join(out, "final.json"), final), self.dist)  # after the last collective
        self.say(diagnostics.done_line(final, out))
        if self.lead and checkpoint.finished(out):
            checkpoint.drop_aside(out)
        return 0
