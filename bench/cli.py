"""The benchmark command line: `python -m bench speed|accuracy ...`, run from the repository root.

    python -m bench speed --quick                     # the speed ratios (bench/speed.py), tiny shapes
    python -m bench accuracy --dry-run                # the accuracy grid's runs (bench/accuracy.py)
    python -m bench accuracy --table-only --out-md bench/README.md --out-csv results/accuracy.csv

The accuracy tables come from bench/report.py, read from the packed runs (bench/pack.py);
bench/README.md holds the results.
"""
import argparse
import os
import re
import sys

from bench import accuracy as acc
from bench import mechanism
from bench import pack
from bench import report
from bench import round2
from bench.speed import BUDGET_S, ROUNDS, speed_main

# ----------------------------------------------------------------------------- accuracy

def dry_run(runs, runs_dir, jobs, packed):
    """Print each run's state (done / stale from the packs, unpacked / resume / new from its
    folder) and train.py flags, and the estimated time of what is left."""
    left = 0.0
    for r in runs:
        state = acc.run_state(r, runs_dir, packed)
        left += 0.0 if state in ("done", "stale", "unpacked") else acc.estimate_s(r.cfg)
        print(f"{state:6s}  {r.key}  {' '.join(r.argv)}")
        if state == "stale":
            print(f"        {acc.STALE_HOW}: " + "; ".join(acc.stale_flags(packed[r.key]["config"], r.argv)))
    print(f"{len(runs)} runs; estimated time left ≈ {acc.fmt_duration(left)} of CPU at 1 thread each "
          f"(≈ {acc.fmt_duration(left / jobs)} with --jobs {jobs} on free cores)")


def accuracy_main(args):
    """`python -m bench accuracy`: list, run (and pack) or tabulate the grid's runs."""
    if args.grid is None and not (args.dry_run or args.table_only):
        raise SystemExit("bench accuracy: launching the grid takes hours of CPU; name it with "
                         "--grid main|ablations|all (or look first with --dry-run)")
    args.grid = args.grid or "all"
    args.pack_dir = args.pack_dir or acc.default_pack_dir(args.runs_dir)
    common = dict(acc.COMMON, epochs=args.epochs, limit_train=args.limit_train)
    runs = acc.plan(acc.grid_settings(common, args.grid), acc.SEEDS)
    try:
        todo = [r for r in runs if not args.only or re.search(args.only, r.key + " " + " ".join(r.argv))]
    except re.error as e:
        raise SystemExit(f"bench: --only {args.only!r} is not a regular expression ({e})")
    check_outputs(args)
    print(f"accuracy grid {args.grid}: --epochs {args.epochs} --limit-train {args.limit_train} "
          f"(grid defaults {acc.COMMON['epochs']}, {acc.COMMON['limit_train']}), seeds {acc.SEEDS}, "
          f"runs in {args.runs_dir}, packed in {acc.pack_file(args.pack_dir, args.grid)}", file=sys.stderr)
    if args.grid in ("cnn", "round2"):
        print(f"the cnn8 table overrides them with its CPU budget {acc.CNN_BUDGET} (bench/accuracy.py)", file=sys.stderr)
    if args.dry_run:
        return dry_run(todo, args.runs_dir, args.jobs, pack.read_packs(args.pack_dir))
    codes = {}
    if not args.table_only:
        report.record_launch(args)
        codes = acc.execute(todo, args.runs_dir, args.jobs, args.threads_per_job,
                            log=lambda s: print(s, file=sys.stderr, flush=True),
                            pack_path=acc.pack_file(args.pack_dir, args.grid))
    packed = pack.read_packs(args.pack_dir)
    warn_unpacked(runs, args.runs_dir, packed)
    write_tables(args, common, runs, packed)
    return _fail_if([k for k, rc in codes.items() if rc != 0])


def write_tables(args, common, runs, packed):
    """Print the grid's markdown section from the packed runs and write --out-md / --out-csv."""
    if args.grid in acc.ROUND2_GRIDS:   # the round-two tables are one section, whichever of its grids ran
        section = round2.section(common, packed, ROUND2_TITLE)
        print(section, end="")
        if args.out_md:
            report.write_section(args.out_md, section, ROUND2_TITLE)
        return
    if args.grid == "mechanism":
        section = mechanism.section(common, packed)
        print(section, end="")
        drawn = mechanism.figure(common, packed, os.path.join(args.pack_dir, os.path.basename(mechanism.FIGURE)))
        print(f"bench: figure {drawn}" if drawn else "bench: no figure (matplotlib missing or no run packed)", file=sys.stderr)
        if args.out_md:
            report.write_section(args.out_md, section, mechanism.TITLE)
        return
    keys = [r.key for r in runs]
    results = {r.key: report.load_result(packed.get(r.key), r.argv) for r in runs}
    section = report.accuracy_section(args, common, acc.MAIN, acc.ABLATIONS, results, keys, packed)
    print(section, end="")
    if args.out_md:
        report.write_section(args.out_md, section)
    if args.out_csv:
        report.write_csv(args.out_csv, report.csv_rows(common, acc.MAIN, acc.ABLATIONS, acc.SEEDS, results, args.grid))


def warn_unpacked(runs, runs_dir, packed):
    """One line when run folders hold finished runs that no pack has (the tables leave them out
    until a run of the grid command packs them)."""
    left = [r.key for r in runs if r.key not in packed and acc.folder_state(os.path.join(runs_dir, r.key)) == "unpacked"]
    if left:
        print(f"bench: {len(left)} finished run(s) in {runs_dir} are not packed yet and not in the tables "
              f"(the grid command without --table-only packs them first): {', '.join(left[:5])}"
              + (", ..." if len(left) > 5 else ""), file=sys.stderr)


def check_outputs(args):
    """One line, before any run, for outputs that could only fail after the grid ran."""
    if (args.grid in acc.ROUND2_GRIDS or args.grid == "mechanism") and args.out_csv:
        raise SystemExit(f"bench accuracy: --out-csv is for the main and ablation tables; --grid {args.grid} "
                         "writes its section with --out-md only")
    for flag, path in (("--out-md", args.out_md), ("--out-csv", args.out_csv)):
        check_out_path(flag, path)
    for flag, folder in (("--runs-dir", args.runs_dir), ("--pack-dir", args.pack_dir)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise SystemExit(f"bench accuracy: {flag} {folder} is a file, not a folder")
    for name in pack.PACKS.values():
        if os.path.isdir(os.path.join(args.pack_dir, name)):
            raise SystemExit(f"bench accuracy: --pack-dir {args.pack_dir}: {name} is a folder, not a file")


def check_out_path(flag, path):
    """An output file's folder must exist and the path must not be a folder (checked up front)."""
    if not path:
        return
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise SystemExit(f"bench: {flag} {path}: no folder {folder}")
    if os.path.isdir(path):
        raise SystemExit(f"bench: {flag} {path} is a folder, not a file")


ROUND2_TITLE = "## Accuracy, round two: training length, sparse masks, KAN heads"


def _fail_if(failed):
    if failed:
        raise SystemExit(f"bench accuracy: {len(failed)} run(s) failed: {', '.join(failed)}")


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_accuracy_parser(sub):
    a = sub.add_parser("accuracy", help="test accuracy of FC/KAN vs DFC/DKAN heads under label noise")
    a.add_argument("--grid", choices=acc.GRIDS,
                   help="which tables' runs; required to launch runs (hours of CPU), default all with --dry-run/--table-only")
    a.add_argument("--runs-dir", default=os.path.join("results", "runs"),
                   help="scratch: train.py's folder per run, named by its key, while it runs (default results/runs, git-ignored)")
    a.add_argument("--pack-dir", metavar="DIR",
                   help="the packed finished runs (accuracy-runs.jsonl, round2-runs.jsonl: bench/pack.py) and "
                        "launches.jsonl; the tables read only these (default: the folder above --runs-dir, results/)")
    a.add_argument("--jobs", type=positive_int, default=1, help="runs in parallel, each its own process (default 1)")
    a.add_argument("--threads-per-job", type=positive_int, default=1, help="OMP/MKL threads of each run (default 1)")
    a.add_argument("--epochs", type=positive_int, default=acc.COMMON["epochs"],
                   help=f"train.py --epochs of every run (grid default {acc.COMMON['epochs']})")
    a.add_argument("--limit-train", type=non_negative_int, default=acc.COMMON["limit_train"],
                   help=f"train.py --limit-train of every run, 0 = all (grid default {acc.COMMON['limit_train']})")
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


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bench", description="dcm-ref benchmarks (see bench/cli.py's docstring).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed", help="side-by-side speed and memory ratios of the DCM heads")
    s.add_argument("--quick", action="store_true", help="tiny shapes and 3-5 rounds (a smoke test, not a measurement)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where tensors live (default cpu)")
    s.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1: shared, noisy machines)")
    s.add_argument("--keep", type=float, default=0.1, help="DFC kept fraction (default 0.1, as train.py's --keep)")
    s.add_argument("--budget", type=float, default=BUDGET_S,
                   help=f"seconds per comparison, sets the rounds within {ROUNDS} (default {BUDGET_S})")
    s.add_argument("--max-literal-gb", type=float, default=4.0,
                   help="skip a literal score form whose B×C×d tensors would exceed this many GB (default 4)")
    s.add_argument("--out", help="also write the table (markdown) to this file")
    s.set_defaults(run=speed_main)
    add_accuracy_parser(sub)
    return p


def main(argv=None):
    """Parse argv and run the command; a damaged pack or launch record is one line, not a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except pack.PackError as e:
        raise SystemExit(f"bench: {e}") from None


if __name__ == "__main__":
    main()
