"""Presets (presets.py, train.py --preset/--list-presets) and the run comparison table
(plot.py --table): every preset is a valid flag set, explicit flags override it,
config.json records it, and the table reports config differences and the last, best and
validation-selected test accuracy of real and hand-written run folders."""
import json
import os

import pytest

from bench import accuracy as bench_accuracy
import checkpoint
import plot
import presets
import train
import train_cli


def parse(argv):
    argv, name = presets.expand(argv)
    return train.build_parser().parse_args(argv), name


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_is_a_valid_flag_set(name):
    a, got = parse(["--preset", name])
    assert got == name and a.preset == name
    train_cli.check_args(a)                                   # raises UserError on a bad value
    assert presets.PRESETS[name][1]                       # a source for every preset


def test_explicit_flags_override_the_preset_wherever_they_are_typed():
    a, _ = parse(["--lr", "0.3", "--preset", "cifar10-anl_ce", "--noise-rate", "0.8"])
    assert (a.lr, a.noise_rate, a.loss, a.backbone, a.weight_decay) == (0.3, 0.8, "anl_ce", "cnn8", 0.0)
    a, _ = parse(["--preset=cifar100-ce"])
    assert (a.backbone, a.lr, a.weight_decay, a.epochs) == ("resnet34", 0.1, 1e-5, 200)


def test_every_switch_a_preset_turns_on_can_be_turned_off():
    """Typed flags win also for switches: --no-amp after a preset that sets --amp."""
    for name in presets.PRESETS:
        switches = [f for f in presets.flags(name) if f.startswith("--") and f[2:].replace("-", "_") in
                    {a.dest for a in train.build_parser()._actions if a.nargs == 0 and a.const is None}]
        for flag in switches:
            a, _ = parse(["--preset", name, "--no-" + flag[2:]])
            assert getattr(a, flag[2:].replace("-", "_")) is False, (name, flag)
    a, _ = parse(["--preset", "webvision-mini", "--no-amp"])
    assert a.amp is False


@pytest.mark.parametrize("argv, warned", [
    (["--preset", "cifar10-ce", "--loss", "anl_ce"], "usually trains with 0"),      # wd 1e-4 set for ce
    (["--preset", "cifar100-anl_ce", "--loss", "ce"], "usually trains with 0.0001"),   # wd 0 set for anl_ce
    (["--preset", "cifar10-ce", "--loss", "gce"], None),                               # same kind: wd fits
    (["--preset", "cifar10-ce", "--loss", "anl_ce", "--weight-decay", "0"], None),     # chosen explicitly
    (["--preset", "fmnist-grid", "--loss", "anl_ce"], None),                           # preset sets no wd
    (["--loss", "anl_ce"], None),
])
def test_a_loss_typed_over_a_preset_warns_when_its_weight_decay_was_set_for_the_other_kind(argv, warned):
    a, _ = parse(argv)
    got = train_cli.preset_warnings(a)
    assert (got == []) if warned is None else (len(got) == 1 and warned in got[0] and "\n" not in got[0])


def test_fmnist_grid_preset_is_the_benchmark_grid():
    a, _ = parse(["--preset", "fmnist-grid"])
    for k, v in {**bench_accuracy.COMMON, **bench_accuracy.ABLATION_BASE}.items():
        assert getattr(a, k) == v, k


@pytest.mark.parametrize("argv, match", [(["--preset", "nope"], "unknown"), (["--preset"], "needs a NAME"),
                                         (["--preset", "cifar10-ce", "--preset=cifar100-ce"], "2 times"),
                                         (["--pres", "fmnist-grid"], "in full")])
def test_bad_preset_is_one_line_and_exit_2(argv, match, capsys, tmp_path):
    assert train.main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r")


def test_list_presets_prints_each_with_flags_and_source(capsys):
    assert train.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    for name, (fl, source) in presets.PRESETS.items():
        assert f"{name}\n" in out and fl in out and source in out


def _tiny_run(out, *extra):
    argv = ["--out", str(out), "--epochs", "2", "--batch-size", "64", "--threads", "1", *extra]
    assert train.main(argv) == 0
    return str(out)


def test_config_json_records_the_preset_and_explicit_flags_win(tmp_path):
    run = _tiny_run(tmp_path / "p", "--preset", "fmnist-grid", "--dataset", "digits", "--limit-train", "0",
                    "--val-frac", "0.2")
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["preset"] == "fmnist-grid" and cfg["dataset"] == "digits" and cfg["epochs"] == 2
    assert (cfg["lr"], cfg["noise_rate"], cfg["keep"]) == (0.05, 0.6, 0.1)   # from the preset


def test_a_preset_run_without_out_is_named_by_its_flags_and_config_json_records_the_preset(tmp_path, monkeypatch):
    """The default run folder of --preset NAME is the one its flags typed out would get (no
    '-preset=NAME' token); config.json still says which preset it was."""
    monkeypatch.chdir(tmp_path)
    extra = ["--dataset", "digits", "--limit-train", "0", "--val-frac", "0.2", "--epochs", "2", "--batch-size", "64",
             "--threads", "1"]
    assert train.main(["--preset", "fmnist-grid", *extra]) == 0
    defaults = vars(train.build_parser().parse_args([]))
    typed_out = vars(train.build_parser().parse_args(presets.flags("fmnist-grid") + extra))
    assert os.listdir("runs") == [checkpoint.default_run_name(typed_out, defaults)]
    cfg = json.load(open(os.path.join("runs", os.listdir("runs")[0], "config.json")))
    assert cfg["preset"] == "fmnist-grid" and cfg["dataset"] == "digits"


# ----------------------------------------------------------------------------- plot.py --table

def _fake_run(folder, config, rows):
    os.makedirs(folder)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(folder)


def test_table_selects_the_test_accuracy_at_the_best_validation_epoch(tmp_path, capsys):
    rows = [dict(epoch=1, test_acc=0.50, val_acc_noisy=0.40, seconds=1.0),
            dict(epoch=2, test_acc=0.70, val_acc_noisy=0.45, seconds=1.5),
            dict(epoch=3, test_acc=0.60, val_acc_noisy=0.45, seconds=1.0),   # tie: the first epoch stays
            dict(epoch=4, test_acc=0.65, val_acc_noisy=0.30, seconds=1.0)]
    a = _fake_run(tmp_path / "a", {"head": "dfc", "keep": 0.1, "epochs": 4, "torch": "x"}, rows)
    b = _fake_run(tmp_path / "b", {"head": "fc", "keep": 0.1, "epochs": 10, "torch": "y"},
                  [dict(epoch=1, test_acc=0.55, seconds=2.0)])
    assert plot.main(["--table", a, b]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | head | epochs |") or lines[0].startswith("| run | epochs | head |")
    assert "keep" not in lines[0] and "torch" not in lines[0]          # equal flags and versions are not differences
    assert "| 65.00 | 70.00 (ep 2) | 70.00 (ep 2) | 4 | 4.5 |" in lines[2]
    assert "| 55.00 | 55.00 (ep 1) | – | 1/10 | 2.0 |" in lines[3]      # no validation split; unfinished run


def test_table_of_real_runs(tmp_path, capsys):
    a = _tiny_run(tmp_path / "fc", "--head", "fc", "--val-frac", "0.2")
    b = _tiny_run(tmp_path / "dfc", "--head", "dfc", "--val-frac", "0.2")
    capsys.readouterr()                                                # drop train.py's output
    assert plot.main(["--table", a, b]) == 0
    out = capsys.readouterr().out
    header, _, row_fc, row_dfc = out.strip().splitlines()
    assert header.split(" | ")[1] == "head"
    for run, row in ((a, row_fc), (b, row_dfc)):
        final = json.load(open(os.path.join(run, "final.json")))
        assert f"| {100 * final['test_acc_last']:.2f} | {100 * final['test_acc_best']:.2f} (ep {final['best_epoch']}) |" in row


def test_table_of_a_non_run_is_one_line_exit_2(tmp_path, capsys):
    assert plot.main(["--table", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
