"""bench/pack.py: the packed accuracy runs. A finished run folder round-trips through a pack
line; a damaged line is one error naming the file and line (and one line on the command
line, no traceback); a finished run is appended exactly once, atomically; and the committed
packs regenerate the committed tables of bench/README.md and results/accuracy.csv."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from bench import accuracy as acc
from bench import cli
from bench import pack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = acc.make_run(dict(acc.COMMON, noise="symmetric", noise_rate=0.6, loss="ce", head="dfc", seed=0))
OTHER = acc.make_run(dict(RUN.cfg, seed=1))


def write_folder(runs_dir, run, last=0.5, report=True):
    """A run folder as train.py leaves it when finished (a stand-in with real file formats)."""
    folder = os.path.join(runs_dir, run.key)
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"seed": run.cfg["seed"], "device_used": "cpu", "grad_clip": 5.0}, f, indent=1)
    if report:
        with open(os.path.join(folder, "noise_report.json"), "w") as f:
            json.dump({"rate": 0.6, "per_class": [0.6, 0.6]}, f, indent=1)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"epoch": 1, "test_acc": 0.1 + 1e-17, "val_acc_noisy": 0.3}) + "\n")
        f.write(json.dumps({"epoch": 2, "test_acc": last, "val_acc_noisy": None, "odd": float("nan")}) + "\n")
    with open(os.path.join(folder, "final.json"), "w") as f:
        json.dump({"test_acc_last": last, "test_acc_best": 0.7, "finished": "2026-12-01T10:00:00Z"}, f, indent=1)
    with open(os.path.join(folder, "stdout.log"), "w") as f:
        f.write("$ python train.py ...\n")
    return folder


def lines_of(path):
    with open(path) as f:
        return f.read().splitlines()


def test_a_finished_folder_round_trips_through_a_pack_line(tmp_path):
    folder = write_folder(str(tmp_path / "runs"), RUN)
    record = pack.record_from_folder(folder, RUN.key, RUN.argv)
    path = str(tmp_path / "p.jsonl")
    assert pack.append(path, record) is True
    (back,) = pack.read_pack(path).values()
    assert back["key"] == RUN.key and back["argv"] == list(RUN.argv) and re.fullmatch(r"\d{4}-.*Z", back["packed"])
    for name, field in (("config.json", "config"), ("final.json", "final"), ("noise_report.json", "noise_report")):
        with open(os.path.join(folder, name)) as f:
            assert back[field] == json.load(f)
    assert back["metrics"][0] == {"epoch": 1, "test_acc": 0.1 + 1e-17, "val_acc_noisy": 0.3}   # floats exact
    assert back["metrics"][1]["odd"] != back["metrics"][1]["odd"]   # NaN survives
    assert "stdout" not in json.dumps(back) and len(lines_of(path)) == 1   # one line, no log
    pack.write_pack(path, [back])
    assert pack.read_pack(path) == {RUN.key: back}


def test_a_run_without_a_noise_report_packs_null(tmp_path):
    folder = write_folder(str(tmp_path), RUN, report=False)
    assert pack.record_from_folder(folder, RUN.key, RUN.argv)["noise_report"] is None


def good_line(tmp_path):
    folder = write_folder(str(tmp_path / "runs"), RUN)
    return pack.dump_line(pack.record_from_folder(folder, RUN.key, RUN.argv)).rstrip("\n")


def damage(line):
    """-> {what: (damaged line, the reason expected in the error)}."""
    record = json.loads(line)
    without = lambda name: json.dumps({k: v for k, v in record.items() if k != name})
    return {
        "cut": (line[: len(line) // 2], r"not JSON \(.* at column \d+\)"),
        "no final": (without("final"), "missing field 'final'"),
        "no metrics": (without("metrics"), "missing field 'metrics'"),
        "no config": (without("config"), "missing field 'config'"),
        "wrong type": (json.dumps(dict(record, metrics={})), "field 'metrics' is a dict"),
        "extra": (json.dumps(dict(record, stdout="x")), "unknown field"),
        "key vs argv": (json.dumps(dict(record, argv=record["argv"] + ["--seed", "1"])), "does not match its argv"),
        "no accuracy": (json.dumps(dict(record, final={"best_epoch": 1})), "final has no number 'test_acc_last'"),
        "bad row": (json.dumps(dict(record, metrics=[{"test_acc": 1}])), "integer 'epoch'"),
        "a list": ("[1, 2]", "a list, not a JSON object"),
    }


def test_every_damaged_line_is_one_error_naming_the_file_and_line(tmp_path):
    line = good_line(tmp_path)
    path = tmp_path / "accuracy-runs.jsonl"
    for what, (bad, reason) in damage(line).items():
        path.write_text(f"\n{bad}\n")   # a blank line 1 is skipped, the damage is on line 2
        with pytest.raises(pack.PackError) as err:
            pack.read_pack(str(path))
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{path}:2: "), what
        assert re.search(reason, message), (what, message)


def test_a_key_packed_twice_is_an_error_in_one_pack_and_across_packs(tmp_path):
    line = good_line(tmp_path)
    (tmp_path / "accuracy-runs.jsonl").write_text(f"{line}\n{line}\n")
    with pytest.raises(pack.PackError, match=r"accuracy-runs.jsonl:2: run .* is packed twice \(also line 1\)"):
        pack.read_packs(str(tmp_path))
    (tmp_path / "accuracy-runs.jsonl").write_text(f"{line}\n")
    (tmp_path / "round2-runs.jsonl").write_text(f"{line}\n")
    with pytest.raises(pack.PackError, match="also in another pack"):
        pack.read_packs(str(tmp_path))


def test_a_damaged_pack_is_one_line_on_the_command_line_not_a_traceback(tmp_path):
    (tmp_path / "accuracy-runs.jsonl").write_text(good_line(tmp_path) + "\n{\"key\": \n")
    for extra in (["--table-only"], ["--dry-run"]):
        proc = subprocess.run([sys.executable, "-m", "bench", "accuracy", *extra, "--runs-dir", str(tmp_path / "runs")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert re.fullmatch(rf"bench: {re.escape(str(tmp_path))}/accuracy-runs.jsonl:2: not JSON .*", last), last


def test_a_run_is_appended_once_and_a_failed_write_leaves_the_pack_as_it_was(tmp_path, monkeypatch):
    runs = str(tmp_path / "runs")
    first = pack.record_from_folder(write_folder(runs, RUN), RUN.key, RUN.argv)
    second = pack.record_from_folder(write_folder(runs, OTHER), OTHER.key, OTHER.argv)
    path = str(tmp_path / "accuracy-runs.jsonl")
    assert pack.append(path, first) and not pack.append(path, first)
    assert not pack.append(str(tmp_path / "round2-runs.jsonl"), first)   # held by the sibling pack
    before = lines_of(path)

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(pack.os, "replace", crash)
    with pytest.raises(OSError):
        pack.append(path, second)
    monkeypatch.undo()
    assert lines_of(path) == before and sorted(os.listdir(tmp_path)) == [".pack.lock", "accuracy-runs.jsonl", "runs"]
    assert pack.append(path, second) and list(pack.read_pack(path)) == [RUN.key, OTHER.key]


FINISHING_TRAIN = """import json, os, sys
out = sys.argv[sys.argv.index("--out") + 1]
json.dump({"seed": 0}, open(os.path.join(out, "config.json"), "w"))
open(os.path.join(out, "metrics.jsonl"), "w").write('{"epoch": 1, "test_acc": 0.5}\\n')
json.dump({"test_acc_last": 0.5, "test_acc_best": 0.5}, open(os.path.join(out, "final.json"), "w"))
"""


def test_the_runner_packs_each_finished_run_exactly_once(tmp_path, monkeypatch):
    """A launched run is appended when train.py finishes; a run folder that finished while the
    benchmark was stopped is packed without a launch; a second call launches and packs nothing."""
    (tmp_path / "train.py").write_text(FINISHING_TRAIN)
    acc._train_parser()   # the real train.py's parser, for the stale check, before ROOT points at the stand-in
    monkeypatch.setattr(acc, "ROOT", str(tmp_path))
    runs_dir, path = str(tmp_path / "runs"), str(tmp_path / "accuracy-runs.jsonl")
    write_folder(runs_dir, OTHER)   # finished before: to be packed, not rerun
    launched, lines = [], []
    real = acc.launch
    monkeypatch.setattr(acc, "launch", lambda run, *a: launched.append(run.key) or real(run, *a))
    assert acc.execute([RUN, OTHER], runs_dir, 1, 1, lines.append) == {RUN.key: 0}
    assert launched == [RUN.key] and any("had finished; packed" in line for line in lines)
    assert [json.loads(line)["key"] for line in lines_of(path)] == [OTHER.key, RUN.key]
    assert acc.execute([RUN, OTHER], runs_dir, 1, 1, lines.append) == {}
    assert launched == [RUN.key] and len(lines_of(path)) == 2 and "2 already done, 0 to run" in lines[-1]


def test_a_finished_folder_that_cannot_be_packed_is_a_failed_run_not_a_launch(tmp_path, monkeypatch):
    runs_dir = str(tmp_path / "runs")
    folder = write_folder(runs_dir, RUN)
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write("{cut\n")
    monkeypatch.setattr(acc, "launch", lambda *a, **k: pytest.fail("launched a finished run"))
    codes = acc.execute([RUN], runs_dir, 1, 1, lambda s: None)
    assert re.fullmatch(r"finished but not packed: .*metrics.jsonl:3: not JSON .*", codes[RUN.key])
    assert not os.path.exists(tmp_path / "accuracy-runs.jsonl")


def test_table_only_reads_the_packs_and_names_finished_folders_not_packed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(acc, "SEEDS", (0, 1))
    monkeypatch.setattr(acc, "MAIN", {"noises": (("symmetric", 0.6),), "losses": ("ce",), "heads": ("fc", "dfc")})
    monkeypatch.setattr(acc, "ABLATIONS", {})
    runs_dir = str(tmp_path / "runs")
    pack.append(str(tmp_path / "accuracy-runs.jsonl"),
                pack.record_from_folder(write_folder(str(tmp_path / "done"), RUN, last=0.8), RUN.key, RUN.argv))
    write_folder(runs_dir, OTHER)
    cli.main(["accuracy", "--grid", "main", "--table-only", "--runs-dir", runs_dir])
    out, err = capsys.readouterr()
    assert "| sym 0.6 | ce | fc → dfc | 0/1 | — | 80.00 |" in out
    assert f"1 finished run(s) in {runs_dir} are not packed yet" in err and OTHER.key in err


def section_of(text, title):
    """The lines of markdown section `title` up to the next '## ' heading."""
    lines = text.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_the_committed_packs_regenerate_the_committed_tables(tmp_path, capsys):
    """bench/README.md's accuracy sections (main, round two, mechanism) and results/accuracy.csv, byte for byte (but the
    date the tables were written), from results/*.jsonl by the documented --table-only commands."""
    md, table = tmp_path / "README.md", tmp_path / "accuracy.csv"
    shutil.copy(os.path.join(ROOT, "bench", "README.md"), md)
    cwd = os.getcwd()
    os.chdir(ROOT)   # the commands as documented: relative paths, from the repository root
    try:
        cli.main(["accuracy", "--table-only", "--out-md", str(md), "--out-csv", str(table)])
        cli.main(["accuracy", "--grid", "round2", "--table-only", "--out-md", str(md)])
        packs = tmp_path / "results"   # the mechanism tables also draw their figure into the pack folder: a copy
        shutil.copytree(os.path.join(ROOT, "results"), packs, ignore=shutil.ignore_patterns("runs", "*.png"))
        cli.main(["accuracy", "--grid", "mechanism", "--table-only", "--out-md", str(md), "--pack-dir", str(packs),
                  "--runs-dir", str(packs / "runs")])
        assert (packs / "mechanism-grad-error.png").is_file()
    finally:
        os.chdir(cwd)
    assert "stale" not in capsys.readouterr().err
    with open(os.path.join(ROOT, "bench", "README.md")) as f:
        committed = f.read()
    date = re.compile(r"^- Date: \d{4}-\d\d-\d\d \(tables written\)")
    masked = lambda text: [date.sub("- Date: X (tables written)", line) for line in text.splitlines()]
    assert masked(md.read_text()) == masked(committed)
    assert section_of(md.read_text(), "## Accuracy, round two: training length, sparse masks, KAN heads") == \
        section_of(committed, "## Accuracy, round two: training length, sparse masks, KAN heads")
    with open(os.path.join(ROOT, "results", "accuracy.csv"), "rb") as f:
        assert table.read_bytes() == f.read()
