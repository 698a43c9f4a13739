"""Tables of the accuracy benchmark from finished runs (their pack records, bench/pack.py):
each run's final.json ->
mean ± std over seeds per setting, the main table (base head vs its DCM version, with the
spread verdict and a paired t-test over seeds), the ablation tables, the keep/interval
recommendation from noisy-label validation accuracy, the CSV, and bench/README.md's
'## Accuracy' section. The grid itself (which runs, their keys) is bench/accuracy.py's;
`python -m bench accuracy --table-only` drives this module.
"""
import csv
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import sys

import torch

from bench import accuracy as acc
from bench import pack

# ----------------------------------------------------------------------------- results

def load_result(record, argv=None, warn=None):
    """A packed run (bench/pack.py record, or None) -> dict(last, best, best_epoch, val, at_val,
    device) with accuracies in percent (val: noisy-label validation accuracy at the last epoch;
    at_val: test accuracy at the validation-selected epoch, final.json's test_acc_at_val_best;
    both None without --val-frac); None when there is no record, or, with its train.py argv
    given, when it is stale (acc.stale_flags: it ran under other defaults; one line to warn,
    default stderr)."""
    if record is None:
        return None
    if argv is not None:
        stale = acc.stale_flags(record["config"], argv)
        if stale:
            (warn or _warn)(f"bench: stale run {record['key']} left out of the tables: "
                            f"{acc.STALE_HOW}; " + "; ".join(stale))
            return None
    final, rows = record["final"], record["metrics"]
    val = rows[-1].get("val_acc_noisy") if rows else None
    return dict(last=100 * final["test_acc_last"], best=100 * final["test_acc_best"],
                best_epoch=final.get("best_epoch"), val=None if val is None else 100 * val,
                device=record["config"].get("device_used"),
                at_val=100 * final["test_acc_at_val_best"] if "test_acc_at_val_best" in final else None)


def _warn(line):
    print(line, file=sys.stderr, flush=True)


def stats(values):
    """values (list of float) -> (n, mean, sample std with n - 1, or None below 2 values)."""
    values = [v for v in values if v is not None]
    if not values:
        return 0, None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return len(values), statistics.fmean(values), std


def setting_stats(flags, seeds, results):
    """One setting over its seeds -> {'last'|'best'|'val'|'best_epoch': (n, mean, std)} and the run keys."""
    keys = [acc.make_run(dict(flags, seed=s)).key for s in seeds]
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
    stats_of = {k: setting_stats(f, seeds, results) for k, f in acc.main_settings(common, grid)}
    rows = []
    for (noise, rate), loss in itertools.product(grid["noises"], grid["losses"]):
        for base, dcm in acc.PAIRS:
            if base not in grid["heads"] and dcm not in grid["heads"]:
                continue
            (sb, kb), (sd, kd) = (stats_of.get((noise, rate, loss, h), ({}, [])) for h in (base, dcm))
            cells = [f"{acc.NOISE_LABEL.get(noise, noise)} {rate:g}", loss, f"{base} → {dcm}",
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
    for (name, loss, label), flags in acc.ablation_settings(common, ablations):
        st, _ = setting_stats(flags, seeds, results)
        out.setdefault(name, []).append([loss, label, str(st["last"][0]), fmt_ms(st["val"]),
                                         fmt_ms(st["last"]), fmt_ms(st["best"])])
    return out


ABLATION_HEADER = ("loss", "setting", "n", "val acc (noisy labels, last epoch)", "test: last", "test: best")


def recommend(common, ablations, seeds, results):
    """For acc.CHOOSE's ablations: the DCM setting with the highest mean validation accuracy,
    per loss and over the losses (mean of the per-loss means). Never the test set.
    -> list of lines."""
    lines = []
    for name, what in acc.CHOOSE.items():
        if name not in ablations:
            continue
        val = {}
        for (_, loss, label), flags in acc.ablation_settings(common, {name: ablations[name]}):
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
        items += [("main", key[3], flags) for key, flags in acc.main_settings(common, grid)]
    if which in ("ablations", "all"):
        items += [(key[0], key[2], flags) for key, flags in acc.ablation_settings(common, ablations)]
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


# ----------------------------------------------------------------------------- the bench/README.md section

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def finished_dates(packed, keys):
    """(first, last) dates the packed runs of keys finished, or None: final.json's `finished`
    (UTC), else the day the run was packed (runs from before the field)."""
    days = [packed[k]["final"].get("finished") or packed[k]["packed"] for k in keys if k in packed]
    days = [d[:10] for d in days if isinstance(d, str)]
    return (min(days), max(days)) if days else None


def reproduce_command(args):
    """The `python -m bench accuracy` command that runs this grid (the numbers' source)."""
    cmd = ["python", "-m", "bench", "accuracy", "--grid", args.grid, "--epochs", str(args.epochs),
           "--limit-train", str(args.limit_train), "--runs-dir", args.runs_dir,
           "--jobs", str(args.jobs), "--threads-per-job", str(args.threads_per_job)]
    if os.path.normpath(args.pack_dir) != acc.default_pack_dir(args.runs_dir):
        cmd += ["--pack-dir", args.pack_dir]
    return shlex.join(cmd + (["--only", args.only] if args.only else []))


def record_launch(args):
    """Append this launch (command, parallelism, machine, time) to <pack-dir>/launches.jsonl: the
    section is usually written later by a --table-only call, which must report the runs' machine."""
    os.makedirs(args.pack_dir, exist_ok=True)
    entry = dict(command=reproduce_command(args), jobs=args.jobs, threads=args.threads_per_job, cpu=cpu_name(),
                 cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                 started=datetime.datetime.now().isoformat(timespec="seconds"))
    with open(os.path.join(args.pack_dir, "launches.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_launches(pack_dir):
    """<pack-dir>/launches.jsonl -> its entries ([] without the file); a damaged line is a
    one-line PackError naming the file and line."""
    path = os.path.join(pack_dir, "launches.jsonl")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as e:
            raise pack.PackError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
        if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("command"), str)):
            raise pack.PackError(f"{path}:{n}: a launch is an object with a 'command' string")
        out += [] if entry is None else [entry]
    return out


def launch_grid(command):
    """The --grid of a recorded `python -m bench accuracy` command (None if it has none)."""
    words = command.split()
    return words[words.index("--grid") + 1] if "--grid" in words[:-1] else None


def machine_and_commands(args):
    """-> (machine line, commands line) from the recorded launches of the main/ablation grids
    (round-two and mechanism launches share the runs folder but not these tables), else from this call."""
    launches = [l for l in read_launches(args.pack_dir) if launch_grid(l["command"]) in ("main", "ablations", "all", None)]
    last = launches[-1] if launches else dict(
        command=reproduce_command(args), jobs=args.jobs, threads=args.threads_per_job, cpu=cpu_name(),
        cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version())
    machine = (f"CPU {last['cpu']}, {last['cores']} cores, torch {last['torch']}, Python {last['python']}; "
               f"{last['jobs']} run(s) in parallel x {last['threads']} thread(s) each (OMP/MKL_NUM_THREADS)")
    commands = list(dict.fromkeys(l["command"] for l in launches)) or [last["command"]]
    return machine, ", then ".join(f"`{c}`" for c in commands)


def setup_lines(args, common, results, keys, packed):
    """The bullet list above the tables: date, machine, commands, flags, protocol."""
    done = [k for k in keys if results.get(k)]
    started = [k for k in keys if not results.get(k) and os.path.isdir(os.path.join(args.runs_dir, k))]
    dates = finished_dates(packed, done)
    devices = sorted({results[k]["device"] or "?" for k in done}) or ["—"]
    machine, commands = machine_and_commands(args)
    return [
        f"- Date: {datetime.date.today().isoformat()} (tables written)"
        + (f"; runs finished {dates[0]} to {dates[1]}." if dates else "; no run finished yet."),
        f"- Machine: {machine}; devices the runs used: {', '.join(devices)}.",
        f"- Command: {commands} (resumable: rerun it to continue; `python -m bench accuracy --table-only "
        f"--runs-dir {args.runs_dir} --out-md bench/README.md --out-csv results/accuracy.csv` rewrites this section).",
        f"- Every run is `python train.py {' '.join(acc.train_argv(common))} <row flags> --seed s --out "
        f"<runs-dir>/<key>`, seeds {', '.join(map(str, acc.SEEDS))}. Grid defaults: --epochs {acc.COMMON['epochs']}, "
        f"--limit-train {acc.COMMON['limit_train']}; this table: --epochs {args.epochs}, --limit-train {args.limit_train}.",
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


def accuracy_section(args, common, grid, ablations, results, keys, packed):
    """The markdown of bench/README.md's '## Accuracy' section (starts with that heading);
    packed: the pack records ({key: record}) the results came from."""
    parts = ["## Accuracy", "", *setup_lines(args, common, results, keys, packed)]
    if args.grid in ("main", "all"):
        rows = main_rows(common, grid, acc.SEEDS, results)
        parts += ["", f"### Main table: base head vs its DCM version ({common['dataset']}, "
                      f"{common['backbone']} backbone, DCM keep {common['keep']:g}, mask every "
                      f"{common['dcm_interval']} step(s), train-only masking)", "",
                  md_table(MAIN_HEADER, rows), "", verdict_summary(rows)]
    if args.grid in ("ablations", "all"):
        base = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in acc.ABLATION_BASE.items())
        parts += ["", f"### Ablations ({base} unless the row says otherwise; other flags as above)"]
        for name, rows in ablation_rows(common, ablations, acc.SEEDS, results).items():
            parts += ["", f"#### {name}", "", md_table(ABLATION_HEADER, rows)]
        parts += ["", *recommend(common, ablations, acc.SEEDS, results)]
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
