"""bench/accuracy.py, bench/report.py (`python -m bench accuracy`): the grid harness on a tiny injected grid (digits, 200 samples, 1 epoch,
2 seeds, fc vs dfc) runs real train.py subprocesses, packs each finished run (bench/pack.py),
skips packed runs, survives a crashing run (a stand-in train.py), and aggregates hand-made
pack records into the expected mean ± std tables."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import accuracy as acc
from bench import cli
from bench import pack
from bench import report

TINY_COMMON = dict(acc.COMMON, dataset="digits", limit_train=200, epochs=1)
TINY_MAIN = {"noises": (("symmetric", 0.6),), "losses": ("ce",), "heads": ("fc", "dfc")}
TINY_ABLATIONS = {"keep p": (("ce",), {"fc (no DCM)": {"head": "fc"},       # the same runs as main's fc
                                       "keep 0.3": {"keep": 0.3}})}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(acc, "COMMON", TINY_COMMON)
    monkeypatch.setattr(acc, "MAIN", TINY_MAIN)
    monkeypatch.setattr(acc, "ABLATIONS", TINY_ABLATIONS)
    monkeypatch.setattr(acc, "SEEDS", (0, 1))


def keys_of(head, loss="ce", **flags):
    """Run keys of one tiny setting for seeds 0 and 1."""
    cfg = dict(TINY_COMMON, noise="symmetric", noise_rate=0.6, loss=loss, head=head, **flags)
    return [acc.make_run(dict(cfg, seed=s)).key for s in (0, 1)]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Run the tiny main grid for real once (4 train.py subprocesses, 2 at a time); -> runs dir."""
    mp = pytest.MonkeyPatch()
    for name, value in (("COMMON", TINY_COMMON), ("MAIN", TINY_MAIN), ("ABLATIONS", TINY_ABLATIONS), ("SEEDS", (0, 1))):
        mp.setattr(acc, name, value)
    runs = tmp_path_factory.mktemp("acc") / "runs"
    try:
        cli.main(["accuracy", "--grid", "main", "--runs-dir", str(runs), "--jobs", "2"])
    finally:
        mp.undo()
    return runs


def test_harness_runs_every_tiny_config_to_a_final_json_and_packs_it_once(ran):
    packed = pack.read_pack(str(ran.parent / "accuracy-runs.jsonl"))
    assert sorted(packed) == sorted(keys_of("fc") + keys_of("dfc"))
    for key in keys_of("fc") + keys_of("dfc"):
        final = json.loads((ran / key / "final.json").read_text())
        assert 0.0 <= final["test_acc_last"] <= 1.0
        assert (ran / key / "stdout.log").read_text().startswith("$ ")
        assert packed[key]["final"] == final and len(packed[key]["metrics"]) == 1
        assert packed[key]["config"] == json.loads((ran / key / "config.json").read_text())


FAKE_TRAIN = """import json, os, sys
out = sys.argv[sys.argv.index("--out") + 1]
if sys.argv[sys.argv.index("--seed") + 1] == "0":
    sys.exit("crash")
json.dump({}, open(os.path.join(out, "config.json"), "w"))
open(os.path.join(out, "metrics.jsonl"), "w").write('{"epoch": 1, "test_acc": 0.5}\\n')
json.dump({"test_acc_last": 0.5, "test_acc_best": 0.5}, open(os.path.join(out, "final.json"), "w"))
"""


def test_crashing_run_is_reported_and_the_next_run_still_runs(tiny, tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text(FAKE_TRAIN)   # a real subprocess that crashes for seed 0
    monkeypatch.setattr(acc, "ROOT", str(tmp_path))
    runs = acc.plan(acc.grid_settings(acc.COMMON, "main"), (0, 1))[:2]   # fc seed 0, then dfc seed 0
    runs = [runs[0], acc.make_run(dict(runs[0].cfg, seed=1))]
    codes = acc.execute(runs, str(tmp_path / "runs"), jobs=1, threads=1, log=lambda s: None)
    assert codes == {runs[0].key: 1, runs[1].key: 0}
    assert (tmp_path / "runs" / runs[1].key / "final.json").exists()
    assert "crash" in (tmp_path / "runs" / runs[0].key / "stdout.log").read_text()
    assert list(pack.read_pack(str(tmp_path / "accuracy-runs.jsonl"))) == [runs[1].key]   # the crash is not packed


def test_run_that_cannot_start_is_one_failed_run_and_the_grid_goes_on(tiny, tmp_path, monkeypatch, capsys):
    """A file where a run's folder should be: makedirs raises; that run is reported failed with a
    one-line reason, the next runs still run, and no exception escapes."""
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    monkeypatch.setattr(acc, "ROOT", str(tmp_path))
    cfg = dict(TINY_COMMON, noise="symmetric", noise_rate=0.6, loss="ce", head="fc")
    runs = [acc.make_run(dict(cfg, seed=s)) for s in (1, 2, 3)]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / runs[1].key).write_text("not a folder")
    lines = []
    codes = acc.execute(runs, str(tmp_path / "runs"), jobs=1, threads=1, log=lines.append)
    assert codes[runs[0].key] == 0 and codes[runs[2].key] == 0
    assert codes[runs[1].key].startswith("FileExistsError: ")
    (bad,) = [line for line in lines if runs[1].key in line]
    assert "FAILED to start: FileExistsError" in bad and "\n" not in bad
    assert (tmp_path / "runs" / runs[2].key / "final.json").exists()
    (tmp_path / "cli" / "runs").mkdir(parents=True)   # its own pack folder: tmp_path's pack holds fc seed 1
    (tmp_path / "cli" / "runs" / keys_of("fc")[1]).write_text("not a folder")   # the command line: one line at the end
    with pytest.raises(SystemExit, match="run\\(s\\) failed: .*" + keys_of("fc")[1]):
        cli.main(["accuracy", "--grid", "main", "--runs-dir", str(tmp_path / "cli" / "runs")])
    assert f"{keys_of('fc')[1]}  0s  FAILED to start: FileExistsError" in capsys.readouterr().err


SLOW_TRAIN = """import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)   # as train.py: its own handler, even if started with SIGINT ignored
out = sys.argv[sys.argv.index("--out") + 1]
open(os.path.join(out, "started"), "w").close()
try:
    time.sleep(120)
except KeyboardInterrupt:
    open(os.path.join(out, "interrupted"), "a").write("x")
    sys.exit(130)
"""

DRIVER = """import sys
sys.path.insert(0, {repo!r})
from bench import accuracy as acc
acc.ROOT = {fake!r}
common = dict(acc.COMMON, dataset="digits", limit_train=200, epochs=1)
runs = [acc.make_run(dict(common, noise="symmetric", noise_rate=0.6, loss="ce", head="fc", seed=s)) for s in range(4)]
acc.execute(runs, {runs!r}, jobs=2, threads=1, log=lambda s: None)
"""


def wait_for(proc, runs, marker, deadline):
    """Until two runs wrote `marker` (their fake train.py got that far), while the grid runs."""
    while len(list(runs.glob(f"*/{marker}"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)


def start_grid(tmp_path, fake_train):
    """The 4-run grid of DRIVER on a fake train.py, with its two jobs' runs started -> (process, runs folder)."""
    (tmp_path / "train.py").write_text(fake_train)
    runs = tmp_path / "runs"
    driver = DRIVER.format(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           fake=str(tmp_path), runs=str(runs))
    proc = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True)
    wait_for(proc, runs, "started", time.time() + 60)   # both jobs' runs are sleeping
    return proc, runs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_launching_and_forwards_one_sigint_to_each_running_run(tmp_path, sig):
    proc, runs = start_grid(tmp_path, SLOW_TRAIN)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted; rerun the same command to continue" in err
    assert len(list(runs.glob("*/started"))) == 2            # runs 3 and 4 never started
    assert sorted(p.read_text() for p in runs.glob("*/interrupted")) == ["x", "x"]   # one SIGINT each


SLOW_STOP_TRAIN = SLOW_TRAIN.replace('sys.exit(130)', 'time.sleep(20); sys.exit(130)')   # a long checkpoint


def test_second_interrupt_during_the_grace_period_exits_quietly(tmp_path):
    proc, runs = start_grid(tmp_path, SLOW_STOP_TRAIN)
    proc.send_signal(signal.SIGINT)
    wait_for(proc, runs, "interrupted", time.time() + 60)   # both runs are in their (slow) stop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert "interrupted; rerun the same command to continue" in err


def test_outputs_are_checked_before_any_run(tiny, tmp_path, monkeypatch):
    """Mistakes that would only show after hours of runs (or never) are one line up front."""
    monkeypatch.setattr(acc, "execute", lambda *a, **k: pytest.fail("the grid ran"))
    (tmp_path / "afile").write_text("")
    base = ["accuracy", "--grid", "main", "--runs-dir", str(tmp_path / "runs")]
    for extra, message in (
            (["--out-md", str(tmp_path / "missing" / "B.md")], "--out-md .*: no folder .*missing$"),
            (["--out-csv", str(tmp_path / "missing" / "a.csv")], "--out-csv .*: no folder .*missing$"),
            (["--out-csv", str(tmp_path)], "is a folder, not a file"),
            (["--runs-dir", str(tmp_path / "afile")], "--runs-dir .*afile is a file, not a folder"),
            (["--pack-dir", str(tmp_path / "afile")], "--pack-dir .*afile is a file, not a folder")):
        with pytest.raises(SystemExit, match=message):
            cli.main(base + extra)
    with pytest.raises(SystemExit, match="--out-csv is for the main and ablation tables"):
        cli.main(["accuracy", "--grid", "round2", "--table-only", "--runs-dir", str(tmp_path / "runs"),
                  "--out-csv", str(tmp_path / "r2.csv")])
    assert not (tmp_path / "runs").exists()


def test_second_call_launches_no_subprocess_for_finished_runs(ran, tiny, monkeypatch, capsys):

    def no_launch(*a, **k):
        raise AssertionError("a finished run was launched again")
    monkeypatch.setattr(acc, "launch", no_launch)
    cli.main(["accuracy", "--grid", "main", "--runs-dir", str(ran), "--jobs", "2"])
    assert "4 already done, 0 to run" in capsys.readouterr().err
    # the pack is what counts: without the scratch folders the runs are still done
    cli.main(["accuracy", "--grid", "main", "--runs-dir", str(ran.parent / "empty-scratch"),
              "--pack-dir", str(ran.parent), "--jobs", "2"])
    assert "4 already done, 0 to run" in capsys.readouterr().err


def test_table_only_call_reports_the_launch_of_the_runs_not_its_own(ran, tiny, capsys):
    cli.main(["accuracy", "--grid", "main", "--table-only", "--runs-dir", str(ran)])   # --jobs 1 here
    machine = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("- Machine:"))
    assert "2 run(s) in parallel x 1 thread(s)" in machine


def test_duplicate_configs_of_main_and_ablations_are_one_run(tiny):
    runs = acc.plan(acc.grid_settings(acc.COMMON, "all"), acc.SEEDS)
    assert len(runs) == len({r.key for r in runs}) == 6   # fc, dfc, keep 0.3 (x 2 seeds); "fc (no DCM)" = main's fc


def test_full_grid_shares_dfc_keep_0_1_between_main_and_keep_ablation():
    main = {r.key for r in acc.plan(acc.grid_settings(acc.COMMON, "main"), acc.SEEDS)}
    abl = acc.plan(acc.grid_settings(acc.COMMON, "ablations"), acc.SEEDS)
    shared = [r for r in abl if r.key in main]
    assert len(main) == 6 * 5 * 4 * 3
    # fc and dfc (keep 0.1, t 1, B 128, batch stats, full eval) for ce and anl_ce at sym 0.6, 3 seeds
    assert len(shared) == 2 * 2 * 3
    assert {r.cfg["head"] for r in shared} == {"fc", "dfc"}


def test_run_with_a_checkpoint_but_no_final_json_is_resumed(tiny, tmp_path, monkeypatch):
    run = acc.make_run(dict(TINY_COMMON, noise="symmetric", noise_rate=0.6, loss="ce", head="fc", seed=0))
    (tmp_path / run.key).mkdir()
    (tmp_path / run.key / "checkpoint.pt").write_bytes(b"")
    seen = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen.append((cmd, kw))

        def wait(self):
            return 0
    monkeypatch.setattr(acc.subprocess, "Popen", FakePopen)
    assert acc.launch(run, str(tmp_path), threads=3)[0] == 0
    cmd, kw = seen[0]
    assert cmd[-1] == "--resume" and cmd[-3:-1] == ["--out", str(tmp_path / run.key)]
    assert kw["env"]["OMP_NUM_THREADS"] == "3" and kw["env"]["MKL_NUM_THREADS"] == "3"


def fake_record(key, last, best, val, config=None, argv=None, **final):
    """A packed run as the benchmark packs train.py's files (fractions in [0, 1]); argv: the
    run's flags (any list whose digest ends the key; [] for the tiny keys' own argv)."""
    argv = argv if argv is not None else next(r.argv for r in acc.plan(acc.grid_settings(acc.COMMON, "all"), (0, 1))
                                              if r.key == key)
    return dict(key=key, argv=list(argv), packed="2026-12-01T00:00:00Z",
                final={"test_acc_last": last, "test_acc_best": best, "best_epoch": 1, **final},
                config=config or {"device_used": "cpu"}, noise_report=None, metrics=[{"epoch": 1, "val_acc_noisy": val}])


@pytest.fixture
def fake(tiny, tmp_path):
    """fc: last 80, 84  best 85, 87  val 40, 42 | dfc: last 90, 86  best 86.8, 88.8  val 50, 44 (%)."""
    records = [fake_record(key, last, best, val) for key, last, best, val in zip(
        keys_of("fc") + keys_of("dfc"), (.80, .84, .90, .86), (.85, .87, .868, .888), (.40, .42, .50, .44))]
    pack.write_pack(str(tmp_path / "accuracy-runs.jsonl"), records)
    md, table = tmp_path / "B.md", tmp_path / "acc.csv"
    cli.main(["accuracy", "--grid", "main", "--table-only", "--runs-dir", str(tmp_path / "runs"),
                "--out-md", str(md), "--out-csv", str(table)])
    return md.read_text(), list(csv.DictReader(table.open()))


def test_run_finished_under_another_train_default_is_stale_left_out_and_not_rerun(fake, tiny, tmp_path, monkeypatch, capsys):
    """The run key hashes only the argv: a packed run whose config differs from what train.py now
    makes of its argv (a default changed since) must not enter the tables, nor count as done."""
    runs, path = tmp_path / "runs", str(tmp_path / "accuracy-runs.jsonl")
    bad = keys_of("dfc")[1]
    now = vars(acc._train_parser()[0].parse_args(list(acc.make_run(dict(
        TINY_COMMON, noise="symmetric", noise_rate=0.6, loss="ce", head="dfc", seed=1)).argv)))
    same = {k: now[k] for k in ("momentum", "keep", "optimizer")}
    ignored = {"out": "elsewhere", "device": "cuda", "threads": 7}   # no effect on the results
    records = list(pack.read_pack(path).values())
    for r in records:
        r["config"] = dict(same, **ignored, device_used="cpu")
        if r["key"] == bad:
            r["config"]["grad_clip"] = now["grad_clip"] + 1
    pack.write_pack(path, records)
    capsys.readouterr()
    cli.main(["accuracy", "--grid", "main", "--table-only", "--runs-dir", str(runs)])
    out, err = capsys.readouterr()
    (warning,) = [line for line in err.splitlines() if "stale" in line]
    assert bad in warning and f"--grad-clip: ran with {now['grad_clip'] + 1!r}, now {now['grad_clip']!r}" in warning
    assert "--out" not in warning and "--device" not in warning and "--momentum" not in warning
    assert md_rows(out)[2][3] == "2/1" and md_rows(out)[2][5] == "90.00"   # dfc: seed 0 only
    monkeypatch.setattr(acc, "launch", lambda *a, **k: pytest.fail("a stale run was launched"))
    lines = []
    assert acc.execute(acc.plan(acc.grid_settings(acc.COMMON, "main"), acc.SEEDS), str(runs), 1, 1, lines.append) == {}
    assert "3 already done, 1 stale, 0 to run" in lines[-1] and any(bad in line and "grad-clip" in line for line in lines)
    cli.main(["accuracy", "--grid", "main", "--dry-run", "--runs-dir", str(runs)])
    assert f"stale   {bad}" in capsys.readouterr().out


def test_committed_runs_match_what_train_py_now_makes_of_their_flags():
    """Every packed run of results/ still counts (no train.py default moved under them)."""
    runs = acc.plan(acc.grid_settings(acc.COMMON, "all") + acc.grid_settings(acc.COMMON, "round2")
                    + acc.grid_settings(acc.COMMON, "mechanism"), acc.SEEDS)
    packed = pack.read_packs(os.path.join(acc.ROOT, "results"))
    done = [r for r in runs if r.key in packed]
    assert len(done) == len(packed) > 600   # and the packs hold nothing the grids do not name
    assert {r.key: acc.stale_flags(packed[r.key]["config"], r.argv) for r in done
            if acc.stale_flags(packed[r.key]["config"], r.argv)} == {}


def md_rows(text):
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def test_main_table_has_the_header_and_one_row_per_noise_loss_pair(fake):
    rows = md_rows(fake[0])
    assert rows[0] == list(report.MAIN_HEADER)
    assert [r[:4] for r in rows[2:]] == [["sym 0.6", "ce", "fc → dfc", "2/2"]]   # no kan/dkan in the grid


def test_main_table_means_stds_and_differences_match_hand_computation(fake):
    # last: fc 82 ± sqrt(8) = 2.83, dfc 88 ± 2.83, Δ +6 > sqrt(8 + 8) = 4 -> yes
    # best: fc 86 ± sqrt(2) = 1.41, dfc 87.8 ± 1.41, Δ +1.8 < sqrt(2 + 2) = 2 -> no (though > each std)
    assert md_rows(fake[0])[2][4:12] == ["82.00 ± 2.83", "88.00 ± 2.83", "+6.00", "yes",
                                       "86.00 ± 1.41", "87.80 ± 1.41", "+1.80", "no"]


def test_main_table_paired_t_matches_hand_computation(fake):
    # last, per seed: dfc − fc = 10, 2 -> mean 6, std sqrt(32), t = 6 / (sqrt(32)/sqrt(2)) = 1.5 < 12.706 (df 1)
    assert md_rows(fake[0])[2][12] == "+1.5 (no)"
    assert "Paired t-test over seeds at 5 %: DCM better in 0 rows, worse in 0." in fake[0]


def test_paired_t_sees_a_consistent_gain_that_the_spreads_hide():
    base, dcm = (80.0, 84.0, 82.0), (81.0, 85.1, 82.9)   # seed effects ±2, DCM − base = 1.0, 1.1, 0.9
    results = {f"b{i}": {"last": v} for i, v in enumerate(base)} | {f"d{i}": {"last": v} for i, v in enumerate(dcm)}
    t, verdict = report.paired_t(["b0", "b1", "b2"], ["d0", "d1", "d2"], results, "last")
    assert t == pytest.approx(1.0 / (0.1 / 3 ** 0.5)) and verdict == "better"
    unpaired = report.beyond_spread(report.stats(list(base)), report.stats(list(dcm)))
    assert unpaired[1] == "no"
    flipped = {k: {"last": -v["last"]} for k, v in results.items()}
    assert report.paired_t(["b0", "b1", "b2"], ["d0", "d1", "d2"], flipped, "last")[1] == "worse"
    assert report.paired_t(["b0", "bX"], ["d0", "dX"], results, "last") == (None, "n/a")   # one pair left


def test_csv_has_one_row_per_setting_with_val_means(fake):
    rows = {r["setting"]: r for r in fake[1]}
    assert set(rows) == {"fc", "dfc"}
    assert float(rows["fc"]["val_mean"]) == pytest.approx(41.0)
    assert float(rows["dfc"]["val_std"]) == pytest.approx(18 ** 0.5)
    assert rows["dfc"]["n"] == "2"


def test_one_seed_gives_no_spread_verdict():
    assert report.beyond_spread((1, 80.0, None), (1, 90.0, None)) == (10.0, "n/a")


def test_recommendation_uses_validation_not_test(tiny, tmp_path, monkeypatch):
    # keep 0.3 has the higher test accuracy, keep 0.05 the higher validation accuracy
    abl = {"keep p": (("ce",), {"keep 0.05": {"keep": 0.05}, "keep 0.3": {"keep": 0.3}})}
    monkeypatch.setattr(acc, "ABLATIONS", abl)
    records = [fake_record(key, test, test, val, argv=[]) for keep, test, val in ((0.05, .70, .45), (0.3, .90, .35))
               for key in keys_of("dfc", keep=keep)]
    results = {r["key"]: report.load_result(r) for r in records}
    (line,) = report.recommend(TINY_COMMON, abl, (0, 1), results)
    assert "**keep 0.05**" in line


def test_load_result_reads_the_validation_selected_test_accuracy():
    assert report.load_result(fake_record("old", .8, .9, .4, argv=[]))["at_val"] is None
    new = fake_record("new", .8, .9, .4, argv=[], val_best_epoch=3, test_acc_at_val_best=.85)
    assert report.load_result(new)["at_val"] == pytest.approx(85.0)
    assert report.load_result(new)["val"] == pytest.approx(40.0) and report.load_result(None) is None


def test_write_section_replaces_only_the_accuracy_section(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n## Speed\nfast\n\n## Accuracy\nold\n\n## Later\nkept\n")
    report.write_section(str(path), "## Accuracy\nnew\n")
    assert path.read_text() == "# B\n\n## Speed\nfast\n\n## Accuracy\nnew\n\n## Later\nkept\n"


def test_write_section_appends_when_the_file_has_none(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n## Speed\nfast\n")
    report.write_section(str(path), "## Accuracy\nnew\n")
    assert path.read_text() == "# B\n\n## Speed\nfast\n\n## Accuracy\nnew\n"


def test_runs_dir_defaults_to_results_runs_and_the_packs_to_results_which_hold_the_committed_grid():
    """The documented layout: train.py's folders in results/runs (scratch, git-ignored), the
    finished runs packed in results/*.jsonl, which `--table-only` reads by default."""
    args = cli.build_parser().parse_args(["accuracy"])
    assert args.runs_dir == os.path.join("results", "runs") and args.pack_dir is None
    assert acc.default_pack_dir(args.runs_dir) == "results"
    assert acc.default_pack_dir("/tmp/x/runs/") == "/tmp/x" and acc.default_pack_dir("runs") == "."
    assert acc.pack_file("results", "all") == os.path.join("results", "accuracy-runs.jsonl")
    assert acc.pack_file("results", "cnn") == os.path.join("results", "round2-runs.jsonl")
    assert os.path.isfile(os.path.join(acc.ROOT, "train.py"))
    with open(os.path.join(acc.ROOT, ".gitignore")) as f:
        assert {"/results/runs/", "/results/.pack.lock"} <= set(f.read().splitlines())
    assert all(os.path.isfile(os.path.join(acc.ROOT, "results", name)) for name in pack.PACKS.values())


def test_main_tables_report_the_machine_of_their_own_launches_not_a_later_round_two_grid(tmp_path):
    from types import SimpleNamespace
    from bench import report
    entry = dict(jobs=2, threads=1, cores=2, torch="t", python="p")
    lines = [dict(entry, command="python -m bench accuracy --grid all --jobs 2", cpu="CPU-A"),
             dict(entry, command="python -m bench accuracy --grid cnn --jobs 2", cpu="CPU-B")]
    (tmp_path / "launches.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    args = SimpleNamespace(runs_dir=str(tmp_path / "runs"), pack_dir=str(tmp_path), grid="all", epochs=15, limit_train=20000, jobs=1,
                           threads_per_job=1, only=None)
    machine, commands = report.machine_and_commands(args)
    assert machine.startswith("CPU CPU-A,") and "--grid all" in commands and "--grid cnn" not in commands


def test_finished_dates_come_from_final_json_else_from_the_day_it_was_packed():
    """A fresh clone gives every file the checkout time: the report reads the runs' own dates."""
    packed = {key: fake_record(key, .5, .5, .5, argv=[], **({"finished": finished} if finished else {}))
              for key, finished in (("a", "2026-11-27T11:38:52Z"), ("b", "2026-11-29T08:00:00Z"), ("old", None))}
    assert report.finished_dates(packed, ["a", "b"]) == ("2026-11-27", "2026-11-29")
    assert report.finished_dates(packed, ["a", "old"]) == ("2026-11-27", "2026-12-01")   # no field: packed
    assert report.finished_dates(packed, ["missing"]) is None


def test_launch_record_round_trips_and_a_damaged_line_is_one_error(tmp_path):
    args = cli.build_parser().parse_args(["accuracy", "--grid", "main", "--runs-dir", str(tmp_path / "runs")])
    args.pack_dir = acc.default_pack_dir(args.runs_dir)
    report.record_launch(args)
    (entry,) = report.read_launches(str(tmp_path))
    assert entry["command"] == report.reproduce_command(args) and "--pack-dir" not in entry["command"]
    with open(tmp_path / "launches.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(pack.PackError, match=r"launches.jsonl:2: not JSON"):
        report.read_launches(str(tmp_path))
