"""bench/pack.py: the packed accuracy runs. A finished run folder round-trips through a pack
line; a damaged line is one error naming the file and line; a run is appended exactly once,
atomically."""
import json
import os
import re

import pytest

from bench import accuracy as acc
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
