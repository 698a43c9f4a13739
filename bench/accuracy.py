"""Accuracy benchmark of dcm-ref: a declared grid of train.py runs on
Fashion-MNIST (the paper's table: every noise x loss x head, base head vs its DCM
version) and the reviewers' ablations (keep p, interval t, batch size, statistics,
eval masking, co-teaching, ELR), declared as data, and the runner that executes them:
one train.py process per run, several seeds, resumable, interruptible. The tables
(mean ± std, markdown, CSV) are bench/report.py's. Run from the repository root:

    python -m bench accuracy --dry-run                       # the runs and their estimated CPU time
    python -m bench accuracy --grid all --jobs 2             # run (or continue) everything
    python -m bench accuracy --table-only --out-md bench/README.md --out-csv results/accuracy.csv

train.py writes each run into its folder under --runs-dir (scratch, git-ignored); a finished
run is then appended to its grid's pack (bench/pack.py: results/accuracy-runs.jsonl,
results/round2-runs.jsonl), which is what counts as done and what the tables read.
"""
import concurrent.futures
import contextlib
import io
import itertools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import NamedTuple

from bench import pack

# ============================================================================= the grid
# Each run is `python train.py <flags> --out <runs-dir>/<key>` in its own process, so a
# crash costs one run, not the grid; once finished it is appended to its grid's pack
# (bench/pack.py), and the pack is what counts as done. A run's flags are COMMON, then its grid entry, then
# its seed; <key> is a readable name plus a hash of that full argv, so a configuration
# that two grids share (dfc, keep 0.1, ce, sym 0.6) is one run, used by both tables.

COMMON = {                        # train.py flags of every accuracy run, spelled out
    "dataset": "fashion-mnist",   # 60 000 train / 10 000 test, /usr/share/datasets (README, Datasets)
    "backbone": "mlp",            # 784-256-256 MLP, for a CPU budget; cnn8 (docs/design.md, Protocols) is left for a GPU
    # 20 000 x 15 epochs, not 60 000 x 5 (same CPU time): with 5 passes nothing memorises the
    # noise (fc, ce, sym 0.6: test 84.8 % at epoch 4 and at 5), so no head or loss can differ;
    # with 15 passes CE memorises (79.8 % at epoch 5, 66.8 % at 15), the regime DCM targets.
    "epochs": 15,                 # --epochs of `python -m bench accuracy`
    "limit_train": 20000,         # --limit-train: a seeded stratified subset (0 = all 60 000)
    "val_frac": 0.1,              # held out of the NOISY training set: the only data hyper-parameters are chosen on
    "lr": 0.05, "schedule": "cosine", "batch_size": 128,   # train.py's defaults, fixed here so the grid
    "keep": 0.1, "dcm_interval": 1, "dcm_stats": "batch",  # does not move if those defaults change
    "dcm_eval": "full", "method": "standard",
}
SEEDS = (0, 1, 2)

MAIN = {   # the main table: every noise x loss x head
    "noises": (("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("symmetric", 0.8),
               ("asymmetric", 0.4), ("instance", 0.4)),
    "losses": ("ce", "gce", "sce", "nce_rce", "anl_ce"),
    "heads": ("fc", "dfc", "kan", "dkan"),
}
PAIRS = (("fc", "dfc"), ("kan", "dkan"))   # (base head, its DCM version): one main-table row each

ABLATION_BASE = {"noise": "symmetric", "noise_rate": 0.6, "head": "dfc"}
BOTH = ("ce", "anl_ce")
ABLATIONS = {   # name -> (losses, {row label: flags over COMMON + ABLATION_BASE})
    "keep p": (BOTH, {
        "fc (no DCM)": {"head": "fc"},
        "keep 0.01": {"keep": 0.01}, "keep 0.02": {"keep": 0.02}, "keep 0.05": {"keep": 0.05},
        "keep 0.1": {"keep": 0.1}, "keep 0.3": {"keep": 0.3}, "keep 1.0": {"keep": 1.0}}),
    "dcm-interval t": (BOTH, {
        "fc (no DCM)": {"head": "fc"},
        "interval 1": {"dcm_interval": 1}, "interval 10": {"dcm_interval": 10},
        "interval 50": {"dcm_interval": 50}, "interval 200": {"dcm_interval": 200}}),
    "batch size": (BOTH, {
        "fc, B 32": {"head": "fc", "batch_size": 32}, "dfc, B 32": {"batch_size": 32},
        "fc, B 128": {"head": "fc", "batch_size": 128}, "dfc, B 128": {"batch_size": 128},
        "fc, B 512": {"head": "fc", "batch_size": 512}, "dfc, B 512": {"batch_size": 512}}),
    # At t = 1 both statistics are the current batch, so the comparison needs t > 1.
    "dcm-stats (interval 10)": (BOTH, {
        "batch": {"dcm_interval": 10, "dcm_stats": "batch"},
        "interval": {"dcm_interval": 10, "dcm_stats": "interval"}}),
    "dcm-eval": (BOTH, {"full": {"dcm_eval": "full"}, "masked": {"dcm_eval": "masked"}}),
    "co-teaching": (BOTH, {"fc": {"method": "coteaching", "head": "fc"},
                           "dfc": {"method": "coteaching", "head": "dfc"}}),
    # The grid's 20 000-sample budget against the full 60 000 (54 000 trained): does the verdict hold?
    "training-set size": (BOTH, {
        "fc, 20k": {"head": "fc"}, "dfc, 20k": {},
        "fc, 60k": {"head": "fc", "limit_train": 0}, "dfc, 60k": {"limit_train": 0}}),
    # ELR brings its own loss (CE + its regulariser), so only ce: anl_ce would only add ANL's L1.
    "ELR": (("ce",), {"fc": {"method": "elr", "head": "fc"}, "dfc": {"method": "elr", "head": "dfc"}}),
}
# Round two (where does DCM help?): longer training, sparse masks x long intervals, KAN heads
# at longer training. Same harness and COMMON; a row's "epochs" stretches the cosine schedule
# over the longer run (same shape). Each entry: (losses, base flags, {row label: flags}).
LENGTHS = (15, 40, 80)
CNN_BUDGET = {"limit_train": 3000, "limit_test": 2000, "train_eval_every": 0}
ROUND2 = {
    "training length": (BOTH, {"noise": "symmetric"}, {
        f"{head}, sym {rate:g}, {ep} ep": {"head": head, "noise_rate": rate, "epochs": ep}
        for rate in (0.6, 0.8) for ep in LENGTHS for head in ("fc", "dfc")}),
    "KAN heads, training length": (("ce",), {"noise": "symmetric", "noise_rate": 0.6}, {
        f"{head}, {ep} ep": {"head": head, "epochs": ep} for ep in (40, 80) for head in ("kan", "dkan")}),
    "keep x interval (40 ep)": (BOTH, {"noise": "symmetric", "noise_rate": 0.6, "epochs": 40}, {
        "fc (no DCM)": {"head": "fc"},
        **{f"keep {k:g}, interval {t}": {"head": "dfc", "keep": k, "dcm_interval": t}
           for k in (0.01, 0.02, 0.05, 0.1) for t in (1, 10, 50, 200)}}),
    # The paper's CIFAR backbone family on Fashion-MNIST, at a budget the 2-core dev CPU can
    # run (cnn8 trains ~130 samples/s at 1 thread, ~7 min a run): 3 000 samples (2 700
    # trained, 300 noisy validation), 15 epochs, scored on a fixed 2 000-image stratified
    # test subset, no per-epoch pass over the training set. On a GPU, drop the three
    # limits (`python -m bench accuracy --grid cnn` after editing CNN_BUDGET).
    "CNN backbone (cnn8, sym 0.6)": (BOTH, {"noise": "symmetric", "noise_rate": 0.6, "backbone": "cnn8", **CNN_BUDGET}, {
        head: {"head": head} for head in ("fc", "dfc", "kan", "dkan")}),
}
# The mechanism ablations (is it the score or the sparsity? docs/design.md §2, "Scores other than
# Eq. 2"): every head at DCM's k, schedule and full-head evaluation; only the score, or dropout
# instead of a mask, changes. --dcm-score is spelled out in every run, so no cell reuses an older
# grid's run: those ran on older code (the main grid's 15-epoch runs of 2026-11-27 do not
# reproduce bit for bit today), and a table must compare runs of one code version.
MECHANISM_COMMON = {"dcm_score": "std"}
MECHANISM_SETTINGS = (("ce", 0.8), ("ce", 0.6), ("anl_ce", 0.8))   # (loss, symmetric noise rate)
MECHANISM_LENGTHS = (15, 40)
MECHANISM_ROWS = {
    "FC": {"head": "fc"},
    "FC + head dropout 0.5": {"head": "fc", "head_dropout": 0.5},
    "DFC std (Eq. 2)": {"head": "dfc"},
    "DFC random": {"head": "dfc", "dcm_score": "random"},
    "DFC magnitude": {"head": "dfc", "dcm_score": "magnitude"},
    "DFC feature": {"head": "dfc", "dcm_score": "feature"},
    "DFC std, interval 50": {"head": "dfc", "dcm_interval": 50},
    "DFC random, interval 50": {"head": "dfc", "dcm_score": "random", "dcm_interval": 50},
    "KAN": {"head": "kan"},
    "DKAN std (Eq. 2)": {"head": "dkan"},
    "DKAN random": {"head": "dkan", "dcm_score": "random"},
}


def mechanism_settings(common):
    """((loss, rate, epochs, row label), flags without seed) of --grid mechanism, in table order."""
    for (loss, rate), ep in itertools.product(MECHANISM_SETTINGS, MECHANISM_LENGTHS):
        for label, flags in MECHANISM_ROWS.items():
            yield (loss, rate, ep, label), {**common, **MECHANISM_COMMON, "noise": "symmetric", "noise_rate": rate,
                                            "loss": loss, "epochs": ep, **flags}


BACKBONE_COST = {"mlp": 1.0, "cnn8": 180.0}   # CPU seconds per sample relative to mlp (cnn8 at CNN_BUDGET, 1 thread)


def round2_settings(common, names):
    """Round-two tables: ((table, loss, label), flags without seed), in table order."""
    for name in names:
        loss_names, base, rows = ROUND2[name]
        for loss in loss_names:
            for label, flags in rows.items():
                yield (name, loss, label), {**common, **base, "loss": loss, **flags}


CHOOSE = {"keep p": "keep", "dcm-interval t": "interval"}   # ablations whose winner is recommended
NOISE_LABEL = {"symmetric": "sym", "asymmetric": "asym", "instance": "inst", "pairflip": "pair"}   # keys, tables

# Seconds on the 2-core dev CPU at 1 thread (shared, load 2-3), for --dry-run and the ETA:
# process start (imports, data, noise) and one epoch per head at batch 128, measured at
# --limit-train 20000 (18 000 trained, 1.0-2.1 s an epoch, evaluation included) and scaled
# to 54 000. Batch B costs about (0.75 + 0.25 * 128 / B) of that, co-teaching 1.3x (two
# networks, each trained on the small-loss part of the batch); anl_ce costs the same as ce.
START_S = 6.0
EPOCH_S = {"fc": 3.3, "dfc": 3.1, "kan": 6.0, "dkan": 6.3}
FULL_TRAIN = 54000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root: train.py


STALE_HOW = ("it finished under other train.py defaults than its flags now give; "
             "delete its line from the pack and move its folder under --runs-dir away to rerun it")


class Run(NamedTuple):
    key: str      # folder name under --runs-dir
    argv: tuple   # train.py flags, without --out
    cfg: dict     # the flags as a dict (COMMON + entry + seed)


# ----------------------------------------------------------------------------- the grid as runs

def train_argv(cfg):
    """Flag dict -> canonical train.py argv (sorted flags, numbers as %g): one config, one argv."""
    argv = []
    for name in sorted(cfg):
        value, flag = cfg[name], "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return tuple(argv)


def run_key(cfg, argv):
    """Readable folder name, e.g. dfc-ce-sym0.6-s0-1a2b3c4d; the hash covers every flag."""
    method = "" if cfg.get("method", "standard") == "standard" else f"-{cfg['method']}"
    score = f"-{cfg['dcm_score']}" if cfg.get("dcm_score", "std") != "std" else ""
    method += f"-hdrop{cfg['head_dropout']:g}" if cfg.get("head_dropout") else ""
    digest = pack.argv_digest(argv)
    return (f"{cfg['head']}{score}-{cfg['loss']}{method}-{NOISE_LABEL.get(cfg['noise'], cfg['noise'])}"
            f"{cfg['noise_rate']:g}-s{cfg['seed']}-{digest}")


def make_run(cfg):
    argv = train_argv(cfg)
    return Run(run_key(cfg, argv), argv, cfg)


def main_settings(common, grid):
    """Main table: ((noise, rate, loss, head), flags without seed), in table order."""
    for (noise, rate), loss, head in itertools.product(grid["noises"], grid["losses"], grid["heads"]):
        yield (noise, rate, loss, head), dict(common, noise=noise, noise_rate=rate, loss=loss, head=head)


def ablation_settings(common, ablations):
    """Ablation tables: ((ablation, loss, label), flags without seed), in table order."""
    for name, (loss_names, rows) in ablations.items():
        for loss in loss_names:
            for label, flags in rows.items():
                yield (name, loss, label), {**common, **ABLATION_BASE, "loss": loss, **flags}


def plan(settings, seeds):
    """Unique runs of (label, flags) settings x seeds, seed-major (a first seed of everything
    finishes before any second seed). -> list of Run, each key once."""
    runs = {}
    for seed in seeds:
        for _, flags in settings:
            run = make_run(dict(flags, seed=seed))
            runs.setdefault(run.key, run)
    return list(runs.values())


def estimate_s(cfg):
    """Rough seconds of one run at 1 thread: START_S + epochs x EPOCH_S scaled (see there)."""
    n = cfg["limit_train"] * (1 - cfg["val_frac"]) if cfg["limit_train"] else FULL_TRAIN
    factor = (0.75 + 0.25 * 128 / cfg["batch_size"]) * (1.3 if cfg["method"] == "coteaching" else 1.0)
    factor *= BACKBONE_COST.get(cfg["backbone"], 1.0)
    return START_S + cfg["epochs"] * EPOCH_S[cfg["head"]] * factor * min(n, FULL_TRAIN) / FULL_TRAIN


# ----------------------------------------------------------------------------- running

def run_state(run, runs_dir, packed):
    """'done' (in the pack: packed = {key: record}), 'stale' (in the pack, but its config differs
    from what train.py now makes of its argv: stale_flags), else its folder's state."""
    record = packed.get(run.key)
    if record is not None:
        return "stale" if stale_flags(record["config"], run.argv) else "done"
    return folder_state(os.path.join(runs_dir, run.key))


def folder_state(run_dir):
    """'unpacked' (final.json: finished, not yet in the pack), 'resume' (a checkpoint) or 'new'."""
    if os.path.exists(os.path.join(run_dir, "final.json")):
        return "unpacked"
    return "resume" if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) else "new"


def _train_parser():
    """train.py's argument parser and the flags that do not change a run's results
    (checkpoint.NAME_IGNORED: the ones a run's name leaves out, e.g. --out, --device, --threads)."""
    global _PARSER
    if _PARSER is None:
        sys.path.insert(0, ROOT)
        import checkpoint
        import train
        _PARSER = train.build_parser(), frozenset(checkpoint.NAME_IGNORED)
    return _PARSER


_PARSER = None


def stale_flags(saved, argv):
    """The result-affecting flags where a finished run's config (saved: its config.json as a
    dict) differs from train.py's parser resolved on the run's argv today (current defaults):
    the run key hashes only the argv, so a changed train.py default would otherwise mix
    configurations in one table. Only flags present in both are compared (an older config.json
    lacks newer flags). -> list of 'flag: ran with X, now Y' ([] when it matches)."""
    parser, ignored = _train_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            now = vars(parser.parse_args(list(argv)))
    except SystemExit:
        return [f"its train.py flags no longer parse ({err.getvalue().strip().splitlines()[-1]})"]
    return [f"--{k.replace('_', '-')}: ran with {saved[k]!r}, now {now[k]!r}"
            for k in sorted(set(saved) & set(now) - ignored) if saved[k] != now[k]]


class Live:
    """The train.py processes running now and the stop flag, shared by the pool's threads."""

    def __init__(self):
        self.lock, self.procs, self.stopping = threading.Lock(), set(), False

    def start(self, cmd, **kw):
        """Popen(cmd) unless stopping (-> None). In its own session, so a Ctrl-C in the terminal
        reaches only the benchmark, which forwards exactly one SIGINT to each run (stop())."""
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, **kw)
            self.procs.add(proc)
            return proc

    def done(self, proc):
        with self.lock:
            self.procs.discard(proc)

    def stop(self, grace_s=60.0):
        """No new runs; SIGINT to the running ones (train.py then exits with its last finished
        epoch's checkpoint, so a rerun resumes it), SIGKILL after grace_s."""
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()


def launch(run, runs_dir, threads, live=None):
    """Run train.py for `run` in a subprocess (log appended to <run>/stdout.log).
    -> (return code, seconds); (None, 0) if `live` is stopping. OMP/MKL_NUM_THREADS set
    torch's intra-op threads."""
    live = live or Live()
    out = os.path.join(runs_dir, run.key)
    resume = ["--resume"] if folder_state(out) == "resume" else []
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *run.argv, "--out", out, *resume]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = live.start(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc is None:
            return None, 0.0
        try:
            rc = proc.wait()
        finally:
            live.done(proc)
    return rc, time.time() - t0


def fmt_duration(seconds):
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def execute(runs, runs_dir, jobs, threads, log=print, pack_path=None):
    """Run every run that no pack holds, `jobs` at a time, and append each finished one to the
    pack at pack_path (default: accuracy-runs.jsonl above runs_dir); -> {key: return code, or
    the one-line reason a run could not start or be packed} of the runs it tried.

    Runs that finished but are not packed yet (final.json in their folder) are packed first,
    not rerun. Progress after each run, with an ETA from the estimated cost of what is left,
    scaled by how the finished runs compared to their estimates.
    """
    pack_path = pack_path or pack_file(default_pack_dir(runs_dir), "all")
    todo, codes, counts = triage(runs, runs_dir, pack_path, log)
    log(f"accuracy: {counts} ({jobs} job(s) x {threads} thread(s)); finished runs go to {pack_path}")
    left = sum(estimate_s(r.cfg) for r in todo)
    spent = est_done = 0.0
    t0, live = time.time(), Live()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    # Both stop signals explicitly: a job started in the background by a shell inherits SIGINT ignored.
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler) if _main_thread() else None
    try:
        futures = {pool.submit(launch_or_reason, r, runs_dir, threads, live): r for r in todo}
        for k, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            run = futures[fut]
            rc, secs = fut.result()
            packing = pack_run(run, runs_dir, pack_path) if rc == 0 else None
            codes[run.key] = packing or rc
            est = estimate_s(run.cfg)
            spent, est_done, left = spent + secs, est_done + est, left - est
            eta = left * (spent / est_done) / jobs
            status = ("ok, packed" if rc == 0 and not packing else f"FAILED: {packing}" if packing else
                      f"FAILED to start: {rc}" if isinstance(rc, str) else
                      f"FAILED rc={rc}, see {os.path.join(runs_dir, run.key, 'stdout.log')}")
            log(f"[{k}/{len(todo)}] {run.key}  {secs:.0f}s  {status}  "
                f"elapsed {fmt_duration(time.time() - t0)}  eta {fmt_duration(eta)}")
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: stop launching, let the running runs checkpoint
        pool.shutdown(wait=False, cancel_futures=True)
        try:
            live.stop()
        except KeyboardInterrupt:   # a second Ctrl-C in the grace period: leave now, quietly; the runs
            print(f"bench accuracy: {INTERRUPTED}; the runs still stopping finish their checkpoint on their own",
                  file=sys.stderr, flush=True)   # have their SIGINT and checkpoint in their own sessions
            os._exit(130)   # not SystemExit: exiting would wait for the pool threads, i.e. for the runs
        raise SystemExit(f"bench accuracy: {INTERRUPTED}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)   # whatever ends the loop, launch nothing more
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
    return codes


def triage(runs, runs_dir, pack_path, log):
    """Pack the finished folders no pack holds (pack_finished; logs the stale runs), then ->
    (runs to launch, {key: reason} of finished folders that could not be packed, the counts in words)."""
    folder = os.path.dirname(pack_path) or "."
    codes = pack_finished(runs, runs_dir, pack_path, pack.read_packs(folder), log)
    packed = pack.read_packs(folder)
    state = {r.key: run_state(r, runs_dir, packed) for r in runs}
    failed = {k: rc for k, rc in codes.items() if rc != 0}
    todo = [r for r in runs if state[r.key] not in ("done", "stale") and r.key not in failed]
    stale = [r for r in runs if state[r.key] == "stale"]
    for r in stale:
        log(f"accuracy: stale run {r.key} (not rerun, not counted): {STALE_HOW}; "
            + "; ".join(stale_flags(packed[r.key]["config"], r.argv)))
    counts = (f"{len(runs)} runs, {len(runs) - len(todo) - len(stale) - len(failed)} already done, "
              + (f"{len(stale)} stale, " if stale else "") + (f"{len(failed)} not packable, " if failed else "")
              + f"{len(todo)} to run")
    return todo, failed, counts


def default_pack_dir(runs_dir):
    """Where the packs live unless --pack-dir says: the folder above --runs-dir (results/ for
    the default results/runs), so a scratch --runs-dir elsewhere never touches results/."""
    return os.path.dirname(os.path.normpath(runs_dir)) or "."


def pack_file(pack_dir, grid):
    """The pack a grid's finished runs are appended to: round2-runs.jsonl for the round-two
    grids, accuracy-runs.jsonl for main, ablations and all."""
    family = "round2" if grid in ROUND2_GRIDS else "mechanism" if grid == "mechanism" else "accuracy"
    return os.path.join(pack_dir, pack.PACKS[family])


def pack_run(run, runs_dir, pack_path):
    """Append a run that train.py finished (final.json in its folder) to the pack, unless some
    pack holds it already -> None, or the one-line reason it could not be packed."""
    run_dir = os.path.join(runs_dir, run.key)
    if folder_state(run_dir) != "unpacked":
        return "train.py exited 0 but wrote no final.json"
    try:
        pack.append(pack_path, pack.record_from_folder(run_dir, run.key, run.argv))
    except (pack.PackError, OSError) as e:
        return f"finished but not packed: {e}"
    return None


def pack_finished(runs, runs_dir, pack_path, packed, log):
    """Pack the runs whose folder has a final.json that no pack holds (they finished while the
    benchmark was stopped, or before it packed runs) -> {key: 0 if packed, else the reason}."""
    codes = {}
    for r in runs:
        if r.key not in packed and folder_state(os.path.join(runs_dir, r.key)) == "unpacked":
            reason = pack_run(r, runs_dir, pack_path)
            codes[r.key] = reason or 0
            log(f"accuracy: run {r.key} " + (f"FAILED: {reason}" if reason else f"had finished; packed into {pack_path}"))
    return codes


INTERRUPTED = ("interrupted; rerun the same command to continue "
               "(finished runs are kept, started ones resume from their checkpoint)")


def launch_or_reason(run, runs_dir, threads, live):
    """launch(), with a run that cannot even start (its folder or log cannot be made, Popen
    fails: an OSError, ...) -> (one-line reason, 0.0): a failed run, not the grid's end."""
    try:
        return launch(run, runs_dir, threads, live)
    except Exception as e:
        return f"{type(e).__name__}: {e}", 0.0


ROUND2_GRIDS = {"length": ("training length",), "kan-length": ("KAN heads, training length",),
                "sparse": ("keep x interval (40 ep)",), "cnn": ("CNN backbone (cnn8, sym 0.6)",),
                "round2": tuple(ROUND2)}


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


GRIDS = ("main", "ablations", "all", *ROUND2_GRIDS, "mechanism")   # the --grid names


def grid_settings(common, which):
    """The (label, flags) settings of --grid main|ablations|all (main first), or of one
    round-two grid: length (training length, FC/DFC), kan-length, sparse (keep x interval),
    cnn (cnn8 backbone, for a GPU), or round2 (all four); or of mechanism (the score ablations)."""
    if which in ROUND2_GRIDS:
        return list(round2_settings(common, ROUND2_GRIDS[which]))
    if which == "mechanism":
        return list(mechanism_settings(common))
    out = list(main_settings(common, MAIN)) if which in ("main", "all") else []
    return out + (list(ablation_settings(common, ABLATIONS)) if which in ("ablations", "all") else [])
