"""plot.py: every figure of a run (accuracy/memorisation, Fig. 3 gradient error, Fig. 4
confidence, Fig. 5 masks) is written as a PNG, several runs overlay into --out, and bad
input is one line on stderr with exit 2. The runs dfc_run / fc_run are conftest.py's."""
import json
import os

import pytest

import plot

FIGURES = ("accuracy.png", "grad_error.png", "confidence.png", "mask_change.png", "masks.png", "summary.png")


def assert_pngs(folder, names):
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(os.path.join(folder, name)) > 1000, name


def test_plot_writes_every_figure_next_to_a_single_run(dfc_run):
    assert plot.main([dfc_run, "--dpi", "40"]) == 0
    assert_pngs(dfc_run, FIGURES)


def test_plot_overlays_several_runs_into_out(tmp_path, dfc_run, fc_run, capsys):
    out = str(tmp_path / "figs")
    assert plot.main([dfc_run, fc_run, "--out", out, "--epochs", "2", "--dpi", "40"]) == 0
    assert_pngs(out, FIGURES)
    assert plot.run_label(json.load(open(os.path.join(fc_run, "config.json"))), fc_run) == "fc · ce"


@pytest.mark.parametrize("case", ["missing", "no_metrics", "empty_metrics", "two_runs_no_out", "mask_epoch"])
def test_plot_bad_input_exits_2_with_one_line(tmp_path, dfc_run, capsys, case):
    bad = tmp_path / "bad"
    bad.mkdir()
    argv, needle = {
        "missing": ([str(tmp_path / "nope")], "metrics.jsonl"),
        "no_metrics": ([str(bad)], "metrics.jsonl"),
        "empty_metrics": ([str(bad)], "no epochs"),
        "two_runs_no_out": ([dfc_run, dfc_run], "--out"),
        "mask_epoch": ([dfc_run, "--epochs", "7"], "epoch_007"),
    }[case]
    if case == "empty_metrics":
        (bad / "metrics.jsonl").write_text("")
    capsys.readouterr()
    assert plot.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_plot_without_matplotlib_says_how_to_install(dfc_run, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert plot.main([dfc_run]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["plot.py needs matplotlib: pip install matplotlib"]


def test_plot_knows_the_dcm_heads_that_nets_defines():
    """plot.py reads runs without importing torch, so it names the DCM heads itself: the same as nets.DCM_HEADS."""
    import nets
    assert plot.DCM_HEADS == tuple(h for h in nets.HEADS if h in nets.DCM_HEADS)


# ----------------------------------------------------------------------------- --table columns

def test_table_leaves_out_exactly_the_config_records_and_the_flags_without_effect(tmp_path):
    """plot.py is torch-free, so it lists config.json's non-flag records and the flags that cannot
    change results itself; here they are derived from what runfolder writes and what
    checkpoint/runfolder ignore."""
    import torch
    import checkpoint
    import distributed
    import runfolder
    import train
    args = train.build_parser().parse_args([])
    flags = dict(vars(args))
    meta = runfolder.run_meta(flags, str(tmp_path), distributed.Dist(), torch.device("cpu"), {"q": 0.7}, 100)
    record = runfolder.resume_record(str(tmp_path), dict(meta, extend=True, epochs=40), {"epoch": 3, "config": {"epochs": 30}})
    assert plot.CONFIG_RECORDS == (set(meta) | set(record)) - set(flags)
    assert plot.NO_RESULT_FLAGS == (checkpoint.NAME_IGNORED | runfolder.CKPT_IGNORED) - {"epochs"}
    assert plot.NO_RESULT_FLAGS < set(flags) and "epochs" not in plot.NOT_CONFIG


def test_table_columns_of_real_runs_one_resumed_and_extended(tmp_path, dfc_run, fc_run, finished, capsys):
    """dfc_run (--save-masks), fc_run (--head fc) and a 1-epoch run resumed with --extend to the
    same 2 epochs: head is the only differing flag; save_masks, out and the resumed/extended
    records are not columns; the result column is 'epochs run'."""
    import train
    from conftest import copy_run
    ext = copy_run(finished, str(tmp_path / "ext"))
    assert train.main(["--out", ext, "--resume", "--extend", "--epochs", "2"]) == 0
    cfg = json.load(open(os.path.join(ext, "config.json")))
    assert cfg["resumed"] and cfg["extended"] and cfg["epochs"] == 2   # what the table must not show
    capsys.readouterr()
    assert plot.main(["--table", dfc_run, fc_run, ext]) == 0
    header, _, *rows = capsys.readouterr().out.strip().splitlines()
    assert header == ("| run | head | test last % | test best % (epoch) | val-selected test % (epoch) "
                      "| epochs run | wall s |")
    assert [r.split(" | ")[1] for r in rows] == ["dfc", "fc", "dfc"]
    assert all(r.split(" | ")[-2] == "2" for r in rows)


def test_table_has_an_epochs_flag_column_only_when_epochs_differ(tmp_path, capsys):
    rows = [dict(epoch=1, test_acc=0.5, seconds=1.0)]
    runs = []
    for name, cfg in (("a", {"head": "dfc", "epochs": 4, "save_masks": True, "threads": 1}),
                      ("b", {"head": "dfc", "epochs": 10, "save_masks": False, "threads": 2,
                             "resumed": [{"at_epoch": 1}], "extended": [{"at_epoch": 1, "epochs_before": 5}]})):
        os.makedirs(tmp_path / name)
        json.dump(cfg, open(tmp_path / name / "config.json", "w"))
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
        runs.append(str(tmp_path / name))
    assert plot.main(["--table", *runs]) == 0
    header, _, a, b = capsys.readouterr().out.strip().splitlines()
    assert header == ("| run | epochs | test last % | test best % (epoch) | val-selected test % (epoch) "
                      "| epochs run | wall s |")                       # the differing flag, then the result
    assert a.startswith("| a | 4 | 50.00 |") and a.endswith("| 1/4 | 1.0 |")
    assert b.startswith("| b | 10 | 50.00 |") and b.endswith("| 1/10 | 1.0 |")


def test_a_run_keeps_its_colour_in_panels_that_show_only_some_runs(dfc_run, fc_run):
    """summary.png: the mask panel draws only the DCM runs; each run's colour is its own everywhere."""
    plt = plot.load_pyplot()
    runs = plot.labelled([plot.read_run(fc_run), plot.read_run(dfc_run)])   # fc first: C0, dfc: C1
    fig, (a1, a2) = plt.subplots(1, 2)
    plot.panel_confidence(a1, runs)
    plot.panel_mask_change(a2, runs)
    colour = {line.get_label().split(":")[0]: line.get_color() for line in a1.lines}
    assert [line.get_color() for line in a2.lines] == [colour[runs[1]["label"]]] == ["C1"]
    plt.close(fig)


@pytest.mark.parametrize("damage", ["out is a file", "damaged mask"])
def test_output_and_mask_file_problems_are_one_line(tmp_path, dfc_run, capsys, damage):
    import shutil
    run = str(tmp_path / "run")
    shutil.copytree(dfc_run, run)
    args = [run, "--dpi", "40"]
    if damage == "out is a file":
        (tmp_path / "afile").write_text("x")
        args += ["--out", str(tmp_path / "afile")]
    else:
        first = sorted(os.listdir(os.path.join(run, "masks")))[0]
        with open(os.path.join(run, "masks", first), "wb") as f:
            f.write(b"not a zip")
    assert plot.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot.py: error:") and err.count("\n") == 1
