"""Accuracy benchmark of dcm-ref (issue 7): a declared grid of train.py runs on
Fashion-MNIST (the paper's table: every noise x loss x head, base head vs its DCM
version) and the reviewers' ablations (keep p, interval t, batch size, statistics,
eval masking, co-teaching, ELR), one process per run, several seeds, resumable,
written as mean ± std tables (markdown, CSV). Run through bench.py:

    python bench.py accuracy --dry-run                       # the runs and their estimated CPU time
    python bench.py accuracy --grid all --jobs 2             # run (or continue) everything
    python bench.py accuracy --table-only --out-md BENCHMARKS.md --out-csv accuracy.csv
"""
import argparse
import concurrent.futures
import csv
import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import torch

# ============================================================================= accuracy (issue 7)
# Each run is `python train.py <flags> --out <runs-dir>/<key>` in its own process, so a
# crash costs one run, not the grid. A run's flags are COMMON, then its grid entry, then
# its seed; <key> is a readable name plus a hash of that full argv, so a configuration
# that two grids share (dfc, keep 0.1, ce, sym 0.6) is one run, used by both tables.

COMMON = {                        # train.py flags of every accuracy run, spelled out
    "dataset": "fashion-mnist",   # 60 000 train / 10 000 test, /usr/share/datasets (SPEC §6)
    "backbone": "mlp",            # 784-256-256 MLP, for a CPU budget; cnn8 (SPEC §7) is left for a GPU
    # 20 000 x 15 epochs, not 60 000 x 5 (same CPU time): with 5 passes nothing memorises the
    # noise (fc, ce, sym 0.6: test 84.8 % at epoch 4 and at 5), so no head or loss can differ;
    # with 15 passes CE memorises (79.8 % at epoch 5, 66.8 % at 15), the regime DCM targets.
    "epochs": 15,                 # --epochs of `bench.py accuracy`
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
ROOT = os.path.dirname(os.path.abspath(__file__))   # train.py lives next to bench.py


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
    digest = hashlib.sha1(" ".join(argv).encode()).hexdigest()[:8]
    return (f"{cfg['head']}-{cfg['loss']}{method}-{NOISE_LABEL.get(cfg['noise'], cfg['noise'])}"
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
    return START_S + cfg["epochs"] * EPOCH_S[cfg["head"]] * factor * min(n, FULL_TRAIN) / FULL_TRAIN


# ----------------------------------------------------------------------------- running

def run_state(run_dir):
    """'done' (final.json), 'resume' (a checkpoint, no final.json) or 'new'."""
    if os.path.exists(os.path.join(run_dir, "final.json")):
        return "done"
    return "resume" if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) else "new"


class Live:
    """The train.py processes running now and the stop flag, shared by the pool's threads."""

    def __init__(self):
        self.lock, self.procs, self.stopping = threading.Lock(), set(), False

    def start(self, cmd, **kw):
        """Popen(cmd) unless stopping (-> None). In its own session, so a Ctrl-C in the terminal
        reaches only bench.py, which forwards exactly one SIGINT to each run (stop())."""
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
    resume = ["--resume"] if run_state(out) == "resume" else []
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


def execute(runs, runs_dir, jobs, threads, log=print):
    """Run every unfinished run, `jobs` at a time; -> {key: return code} of the launched ones.

    Progress after each run, with an ETA from the estimated cost of what is left,
    scaled by how the finished runs compared to their estimates.
    """
    todo = [r for r in runs if run_state(os.path.join(runs_dir, r.key)) != "done"]
    log(f"accuracy: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run "
        f"({jobs} job(s) x {threads} thread(s))")
    left = sum(estimate_s(r.cfg) for r in todo)
    spent = est_done = 0.0
    codes, t0, live = {}, time.time(), Live()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        futures = {pool.submit(launch, r, runs_dir, threads, live): r for r in todo}
        for k, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            run = futures[fut]
            rc, secs = fut.result()
            codes[run.key] = rc
            est = estimate_s(run.cfg)
            spent, est_done, left = spent + secs, est_done + est, left - est
            eta = left * (spent / est_done) / jobs
            status = "ok" if rc == 0 else f"FAILED rc={rc}, see {os.path.join(runs_dir, run.key, 'stdout.log')}"
            log(f"[{k}/{len(todo)}] {run.key}  {secs:.0f}s  {status}  "
                f"elapsed {fmt_duration(time.time() - t0)}  eta {fmt_duration(eta)}")
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: stop launching, let the running runs checkpoint
        pool.shutdown(wait=False, cancel_futures=True)
        live.stop()
        raise SystemExit("bench.py accuracy: interrupted; rerun the same command to continue "
                         "(finished runs are kept, started ones resume from their checkpoint)") from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    pool.shutdown()
    return codes


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------- results

def load_result(run_dir):
    """A finished run -> dict(last, best, best_epoch, val, device) with accuracies in percent
    (val: noisy-label validation accuracy at the last epoch, None without --val-frac);
    None when the run has no final.json."""
    try:
        with open(os.path.join(run_dir, "final.json")) as f:
            final = json.load(f)
    except FileNotFoundError:
        return None
    val = device = None
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        val = rows[-1].get("val_acc_noisy") if rows else None
        with open(os.path.join(run_dir, "config.json")) as f:
            device = json.load(f).get("device_used")
    except FileNotFoundError:
        pass
    return dict(last=100 * final["test_acc_last"], best=100 * final["test_acc_best"],
                best_epoch=final.get("best_epoch"), val=None if val is None else 100 * val, device=device)


def stats(values):
    """values (list of float) -> (n, mean, sample std with n - 1, or None below 2 values)."""
    values = [v for v in values if v is not None]
    if not values:
        return 0, None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return len(values), statistics.fmean(values), std


def setting_stats(flags, seeds, results):
    """One setting over its seeds -> {'last'|'best'|'val'|'best_epoch': (n, mean, std)} and the run keys."""
    keys = [make_run(dict(flags, seed=s)).key for s in seeds]
    done = [results[k] for k in keys if results.get(k)]
    return {f: stats([r[f] for r in done]) for f in ("last", "best", "val", "best_epoch")}, keys


def fmt_ms(st):
    n, mean, std = st
    if not n:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def beyond_spread(base, dcm):
    """(n, mean, std) of base and DCM -> (Δ = DCM − base or None, 'yes'/'no'/'n/a').

    'yes' when |Δ| > sqrt(std_base² + std_DCM²), the seed std of a single-run
    difference; 'n/a' with fewer than 2 seeds on a side.
    """
    if not (base[0] and dcm[0]):
        return None, "n/a"
    diff = dcm[1] - base[1]
    if base[2] is None or dcm[2] is None:
        return diff, "n/a"
    return diff, "yes" if abs(diff) > math.hypot(base[2], dcm[2]) else "no"


# Two-sided 5 % critical values of Student's t by degrees of freedom (df > 9 uses df 9's,
# which is conservative there).
T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_t(base_keys, dcm_keys, results, field):
    """Paired t-test of DCM − base over the seeds both finished -> (t or None, 'better'/'worse'/'no'/'n/a').

    Pairs by seed: runs of one seed share the noisy labels, the subset, the batch order
    and the initialisation, so the per-seed difference cancels what they share and the
    test is sharper than comparing the two spreads. 'better'/'worse' when |t| exceeds
    the two-sided 5 % critical value; n/a below 2 pairs.
    """
    diffs = [results[d][field] - results[b][field]
             for b, d in zip(base_keys, dcm_keys) if results.get(b) and results.get(d)]
    if len(diffs) < 2:
        return None, "n/a"
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    t = mean / (sd / math.sqrt(len(diffs))) if sd > 0 else math.copysign(math.inf, mean) if mean else 0.0
    crit = T_CRIT.get(len(diffs) - 1, T_CRIT[9])
    return t, "better" if t > crit else "worse" if t < -crit else "no"


# ----------------------------------------------------------------------------- tables


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main_rows(common, grid, seeds, results):
    """One row per (noise, loss, pair): the base head vs its DCM head, last and best epoch."""
    stats_of = {k: setting_stats(f, seeds, results) for k, f in main_settings(common, grid)}
    rows = []
    for (noise, rate), loss in itertools.product(grid["noises"], grid["losses"]):
        for base, dcm in PAIRS:
            if base not in grid["heads"] and dcm not in grid["heads"]:
                continue
            (sb, kb), (sd, kd) = (stats_of.get((noise, rate, loss, h), ({}, [])) for h in (base, dcm))
            cells = [f"{NOISE_LABEL.get(noise, noise)} {rate:g}", loss, f"{base} → {dcm}",
                     f"{sb.get('last', (0,))[0]}/{sd.get('last', (0,))[0]}"]
            for field in ("last", "best"):
                b, d = sb.get(field, (0, None, None)), sd.get(field, (0, None, None))
                diff, verdict = beyond_spread(b, d)
                cells += [fmt_ms(b), fmt_ms(d), "—" if diff is None else f"{diff:+.2f}", verdict]
            t, paired = paired_t(kb, kd, results, "last")
            rows.append(cells + [paired if t is None else f"{t:+.1f} ({paired})"])
    return rows


MAIN_HEADER = ("noise", "loss", "base → DCM", "n (base/DCM)", "last: base", "last: DCM", "last: Δ",
               "last: Δ > spread", "best: base", "best: DCM", "best: Δ", "best: Δ > spread", "last: paired t (5 %)")


def verdict_summary(rows):
    """Counts of the last-epoch verdicts: DCM higher / lower beyond the spread, within it."""
    up = sum(r[7] == "yes" and r[6].startswith("+") for r in rows)
    down = sum(r[7] == "yes" and r[6].startswith("-") for r in rows)
    within = sum(r[7] == "no" for r in rows)
    better, worse = (sum(r[12].endswith(f"({w})") for r in rows) for w in ("better", "worse"))
    return (f"Last epoch, DCM − base: higher beyond the seed spread in {up} of {len(rows)} rows, "
            f"lower beyond it in {down}, within it in {within}, not decidable (missing seeds) in "
            f"{len(rows) - up - down - within}. Paired t-test over seeds at 5 %: DCM better in {better} "
            f"rows, worse in {worse}.")


def ablation_rows(common, ablations, seeds, results):
    """{ablation: [row cells]} with val (noisy, last epoch), test last, test best."""
    out = {}
    for (name, loss, label), flags in ablation_settings(common, ablations):
        st, _ = setting_stats(flags, seeds, results)
        out.setdefault(name, []).append([loss, label, str(st["last"][0]), fmt_ms(st["val"]),
                                         fmt_ms(st["last"]), fmt_ms(st["best"])])
    return out


ABLATION_HEADER = ("loss", "setting", "n", "val acc (noisy labels, last epoch)", "test: last", "test: best")


def recommend(common, ablations, seeds, results):
    """For CHOOSE's ablations: the DCM setting with the highest mean validation accuracy,
    per loss and over the losses (mean of the per-loss means). Never the test set.
    -> list of lines."""
    lines = []
    for name, what in CHOOSE.items():
        if name not in ablations:
            continue
        val = {}
        for (_, loss, label), flags in ablation_settings(common, {name: ablations[name]}):
            if flags["head"] in ("dfc", "dkan"):
                val.setdefault(label, {})[loss] = setting_stats(flags, seeds, results)[0]["val"][1]
        per_loss = []
        for loss in ablations[name][0]:
            got = {lab: v[loss] for lab, v in val.items() if v.get(loss) is not None}
            if got:
                best = max(got, key=got.get)
                per_loss.append(f"{loss}: {best} ({got[best]:.2f} %)")
        full = {lab: statistics.fmean(v.values()) for lab, v in val.items()
                if len(v) == len(ablations[name][0]) and None not in v.values()}
        overall = max(full, key=full.get) if full else "— (missing runs)"
        lines.append(f"- Recommended {what} (highest mean noisy-label validation accuracy, last epoch): "
                     f"**{overall}** over the losses; per loss " + ("; ".join(per_loss) or "—") + ".")
    return lines


CSV_FIELDS = ("table", "noise", "noise_rate", "loss", "head", "method", "setting", "n",
              "val_mean", "val_std", "last_mean", "last_std", "best_mean", "best_std", "best_epoch_mean", "runs")


def csv_rows(common, grid, ablations, seeds, results, which):
    """One CSV row per setting (aggregated over seeds), main table then ablations."""
    items = []   # (table, setting label, flags)
    if which in ("main", "all"):
        items += [("main", key[3], flags) for key, flags in main_settings(common, grid)]
    if which in ("ablations", "all"):
        items += [(key[0], key[2], flags) for key, flags in ablation_settings(common, ablations)]
    out = []
    for table, setting, flags in items:
        st, keys = setting_stats(flags, seeds, results)
        row = dict(table=table, noise=flags["noise"], noise_rate=flags["noise_rate"],
                   loss=flags["loss"], head=flags["head"], method=flags["method"], setting=setting,
                   n=st["last"][0], runs=";".join(keys))
        for f in ("val", "last", "best"):
            row[f"{f}_mean"], row[f"{f}_std"] = st[f][1], st[f][2]
        row["best_epoch_mean"] = st["best_epoch"][1]
        out.append(row)
    return out


# ----------------------------------------------------------------------------- the BENCHMARKS.md section

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def finished_dates(runs_dir, keys):
    """(first, last) modification dates of the final.json files of keys, or None."""
    times = [os.path.getmtime(p) for p in (os.path.join(runs_dir, k, "final.json") for k in keys)
             if os.path.exists(p)]
    day = lambda t: datetime.date.fromtimestamp(t).isoformat()
    return (day(min(times)), day(max(times))) if times else None


def reproduce_command(args):
    """The `bench.py accuracy` command that runs this grid (the numbers' source)."""
    cmd = ["python", "bench.py", "accuracy", "--grid", args.grid, "--epochs", str(args.epochs),
           "--limit-train", str(args.limit_train), "--runs-dir", args.runs_dir,
           "--jobs", str(args.jobs), "--threads-per-job", str(args.threads_per_job)]
    return shlex.join(cmd + (["--only", args.only] if args.only else []))


def record_launch(args):
    """Append this launch (command, parallelism, machine, time) to <runs-dir>/launches.jsonl: the
    section is usually written later by a --table-only call, which must report the runs' machine."""
    os.makedirs(args.runs_dir, exist_ok=True)
    entry = dict(command=reproduce_command(args), jobs=args.jobs, threads=args.threads_per_job, cpu=cpu_name(),
                 cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                 started=datetime.datetime.now().isoformat(timespec="seconds"))
    with open(os.path.join(args.runs_dir, "launches.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_launches(runs_dir):
    try:
        with open(os.path.join(runs_dir, "launches.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def machine_and_commands(args):
    """-> (machine line, commands line) from the recorded launches, else from this call."""
    launches = read_launches(args.runs_dir)
    last = launches[-1] if launches else dict(
        command=reproduce_command(args), jobs=args.jobs, threads=args.threads_per_job, cpu=cpu_name(),
        cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version())
    machine = (f"CPU {last['cpu']}, {last['cores']} cores, torch {last['torch']}, Python {last['python']}; "
               f"{last['jobs']} run(s) in parallel x {last['threads']} thread(s) each (OMP/MKL_NUM_THREADS)")
    commands = list(dict.fromkeys(l["command"] for l in launches)) or [last["command"]]
    return machine, ", then ".join(f"`{c}`" for c in commands)


def setup_lines(args, common, results, keys):
    """The bullet list above the tables: date, machine, commands, flags, protocol."""
    done = [k for k in keys if results.get(k)]
    started = [k for k in keys if not results.get(k) and os.path.isdir(os.path.join(args.runs_dir, k))]
    dates = finished_dates(args.runs_dir, done)
    devices = sorted({results[k]["device"] or "?" for k in done}) or ["—"]
    machine, commands = machine_and_commands(args)
    return [
        f"- Date: {datetime.date.today().isoformat()} (tables written)"
        + (f"; runs finished {dates[0]} to {dates[1]}." if dates else "; no run finished yet."),
        f"- Machine: {machine}; devices the runs used: {', '.join(devices)}.",
        f"- Command: {commands} (resumable: rerun it to continue; `python bench.py accuracy --table-only "
        f"--runs-dir {args.runs_dir} --out-md BENCHMARKS.md --out-csv accuracy.csv` rewrites this section).",
        f"- Every run is `python train.py {' '.join(train_argv(common))} <row flags> --seed s --out "
        f"<runs-dir>/<key>`, seeds {', '.join(map(str, SEEDS))}. Grid defaults: --epochs {COMMON['epochs']}, "
        f"--limit-train {COMMON['limit_train']}; this table: --epochs {args.epochs}, --limit-train {args.limit_train}.",
        f"- Runs finished: {len(done)} of {len(keys)}"
        + (f"; started but not finished (running, or failed: see <run>/stdout.log): {len(started)}"
           + (f" ({', '.join(started)})" if len(started) <= 10 else "") if started else "")
        + ". A cell with fewer seeds says so in n; — = no finished run.",
        "- Accuracies in %: mean ± sample std (n − 1) over seeds of the clean-label test accuracy at the "
        "last epoch (`last`) and at the epoch with the highest test accuracy (`best`, as the papers "
        "report it; it looks at the test set, so `last` is the honest number).",
        f"- Validation: --val-frac {common['val_frac']:g} holds out that fraction of the NOISY training set "
        "(noisy labels); `val acc` and the recommended settings use it, never the test set. Under symmetric "
        "noise of rate r the expected noisy-label accuracy is (1 − r)·a + r/(C − 1)·(1 − a) for clean accuracy "
        "a, increasing in a, so it ranks settings as the clean accuracy would.",
        "- `Δ > spread` is yes when |mean DCM − mean base| > sqrt(std_base² + std_DCM²), the seed std "
        "of the difference of one DCM run and one base run; n/a with fewer than 2 seeds.",
        "- `paired t`: t = mean/(std/√n) of the per-seed differences DCM − base of the last-epoch accuracy "
        "(runs of one seed share noisy labels, subset, batch order and initialisation); better/worse when "
        "|t| exceeds the two-sided 5 % critical value (4.30 for 3 seeds), else no.",
    ]


def accuracy_section(args, common, grid, ablations, results, keys):
    """The markdown of BENCHMARKS.md's '## Accuracy' section (starts with that heading)."""
    parts = ["## Accuracy", "", *setup_lines(args, common, results, keys)]
    if args.grid in ("main", "all"):
        rows = main_rows(common, grid, SEEDS, results)
        parts += ["", f"### Main table: base head vs its DCM version ({common['dataset']}, "
                      f"{common['backbone']} backbone, DCM keep {common['keep']:g}, mask every "
                      f"{common['dcm_interval']} step(s), train-only masking)", "",
                  md_table(MAIN_HEADER, rows), "", verdict_summary(rows)]
    if args.grid in ("ablations", "all"):
        base = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in ABLATION_BASE.items())
        parts += ["", f"### Ablations ({base} unless the row says otherwise; other flags as above)"]
        for name, rows in ablation_rows(common, ablations, SEEDS, results).items():
            parts += ["", f"#### {name}", "", md_table(ABLATION_HEADER, rows)]
        parts += ["", *recommend(common, ablations, SEEDS, results)]
    return "\n".join(parts) + "\n"


def write_section(path, section, title="## Accuracy"):
    """Put `section` (which starts with `title`) into the markdown file at path: it replaces
    the lines from `title` to the next '## ' heading, or is appended; the rest is kept."""
    try:
        with open(path) as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        head = "".join(lines)
        text = head + ("\n" if head and not head.endswith("\n\n") else "") + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    with open(path, "w") as f:
        f.write(text)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def grid_settings(common, which):
    """The (label, flags) settings of --grid main|ablations|all (main first)."""
    out = list(main_settings(common, MAIN)) if which in ("main", "all") else []
    return out + (list(ablation_settings(common, ABLATIONS)) if which in ("ablations", "all") else [])


def dry_run(runs, runs_dir, jobs):
    """Print each run's state and train.py flags, and the estimated time of what is left."""
    left = 0.0
    for r in runs:
        state = run_state(os.path.join(runs_dir, r.key))
        left += 0.0 if state == "done" else estimate_s(r.cfg)
        print(f"{state:6s}  {r.key}  {' '.join(r.argv)}")
    print(f"{len(runs)} runs; estimated time left ≈ {fmt_duration(left)} of CPU at 1 thread each "
          f"(≈ {fmt_duration(left / jobs)} with --jobs {jobs} on free cores)")


def accuracy_main(args):
    if args.grid is None and not (args.dry_run or args.table_only):
        raise SystemExit("bench.py accuracy: launching the issue 7 grid takes hours of CPU; name it with "
                         "--grid main|ablations|all (or look first with --dry-run)")
    args.grid = args.grid or "all"
    common = dict(COMMON, epochs=args.epochs, limit_train=args.limit_train)
    runs = plan(grid_settings(common, args.grid), SEEDS)
    keys = [r.key for r in runs]
    try:
        todo = [r for r in runs if not args.only or re.search(args.only, r.key + " " + " ".join(r.argv))]
    except re.error as e:
        raise SystemExit(f"bench.py: --only {args.only!r} is not a regular expression ({e})")
    runs_dir = args.runs_dir
    print(f"accuracy grid {args.grid}: --epochs {args.epochs} --limit-train {args.limit_train} "
          f"(grid defaults {COMMON['epochs']}, {COMMON['limit_train']}), seeds {SEEDS}, runs in {runs_dir}",
          file=sys.stderr)
    if args.dry_run:
        return dry_run(todo, runs_dir, args.jobs)
    codes = {}
    if not args.table_only:
        record_launch(args)
        codes = execute(todo, runs_dir, args.jobs, args.threads_per_job,
                        log=lambda s: print(s, file=sys.stderr, flush=True))
    failed = [k for k, rc in codes.items() if rc != 0]
    results = {k: load_result(os.path.join(runs_dir, k)) for k in keys}
    section = accuracy_section(args, common, MAIN, ABLATIONS, results, keys)
    print(section, end="")
    if args.out_md:
        write_section(args.out_md, section)
    if args.out_csv:
        write_csv(args.out_csv, csv_rows(common, MAIN, ABLATIONS, SEEDS, results, args.grid))
    if failed:
        raise SystemExit(f"bench.py accuracy: {len(failed)} run(s) failed: {', '.join(failed)}")


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_accuracy_parser(sub):
    a = sub.add_parser("accuracy", help="test accuracy of FC/KAN vs DFC/DKAN heads under label noise (issue 7)")
    a.add_argument("--grid", choices=("main", "ablations", "all"),
                   help="which tables' runs; required to launch runs (hours of CPU), default all with --dry-run/--table-only")
    a.add_argument("--runs-dir", default="bench_runs", help="one folder per run, named by its key (default bench_runs)")
    a.add_argument("--jobs", type=positive_int, default=1, help="runs in parallel, each its own process (default 1)")
    a.add_argument("--threads-per-job", type=positive_int, default=1, help="OMP/MKL threads of each run (default 1)")
    a.add_argument("--epochs", type=positive_int, default=COMMON["epochs"],
                   help=f"train.py --epochs of every run (grid default {COMMON['epochs']})")
    a.add_argument("--limit-train", type=non_negative_int, default=COMMON["limit_train"],
                   help=f"train.py --limit-train of every run, 0 = all (grid default {COMMON['limit_train']})")
    a.add_argument("--only", metavar="REGEX", help="launch only the runs whose key or train.py flags match (re.search)")
    a.add_argument("--dry-run", action="store_true", help="list the runs (done / resume / new) and the estimated time; run nothing")
    a.add_argument("--table-only", action="store_true", help="run nothing; tabulate the finished runs")
    a.add_argument("--out-md", metavar="FILE", help="put the tables into FILE's '## Accuracy' section (replaced or appended; the rest kept)")
    a.add_argument("--out-csv", metavar="FILE", help="also write one CSV row per setting (means, stds, n, run keys)")
    a.set_defaults(run=accuracy_main)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value
