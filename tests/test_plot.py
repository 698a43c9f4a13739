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
    """plot.py reads runs without importing torch, so it names the DCM heads itself: the same as nets.Head."""
    import nets
    assert plot.DCM_HEADS == tuple(h for h in nets.HEADS if nets.Head.parse(h).dcm)
