"""The mechanism grid (bench/accuracy.py MECHANISM_*, bench/mechanism.py): its runs, and its
tables on hand-made pack records."""
import pytest

from bench import accuracy as acc
from bench import cli
from bench import mechanism
from test_bench_round2 import write_run


def test_the_grid_is_every_row_at_every_setting_and_length_each_run_once_and_none_reused():
    settings = list(acc.mechanism_settings(acc.COMMON))
    assert len(settings) == len(acc.MECHANISM_ROWS) * len(acc.MECHANISM_SETTINGS) * len(acc.MECHANISM_LENGTHS) == 66
    runs = acc.plan(settings, acc.SEEDS)
    assert len(runs) == 66 * len(acc.SEEDS) == len({r.key for r in runs})
    assert all("--dcm-score" in r.argv for r in runs)          # spelled out: no older grid's run is reused
    older = {r.key for name in ("main", "all", "round2") for r in acc.plan(acc.grid_settings(acc.COMMON, name), acc.SEEDS)}
    assert not older & {r.key for r in runs}
    by_label = {label: flags for label, flags in settings}
    assert by_label[("ce", 0.8, 40, "DFC random, interval 50")] == {
        **acc.COMMON, "dcm_score": "random", "noise": "symmetric", "noise_rate": 0.8, "loss": "ce", "epochs": 40,
        "head": "dfc", "dcm_interval": 50}
    assert acc.make_run(dict(by_label[("anl_ce", 0.8, 15, "FC + head dropout 0.5")], seed=2)).key.startswith(
        "fc-anl_ce-hdrop0.5-sym0.8-s2-")
    assert acc.pack_file("results", "mechanism").endswith("mechanism-runs.jsonl")


def _fill(packed, label, at, accs):
    """Three seeds of one row at setting `at` (loss, rate, epochs): last-epoch test accuracies accs."""
    flags = mechanism.grid(acc.COMMON)[(*at, label)]
    for seed, a in enumerate(accs):
        rec = write_run(packed, flags, seed, test=[0.9] * 5 + [a], val=[0.5] + [0.4] * 5)
        for m, err in zip(rec["metrics"], (1.0,) * 5 + (3.0,)):
            m.update(grad_err_feat_norm=err * (1 + seed), grad_cos_feat=-0.5)


def test_contrast_rows_are_the_paired_differences_of_the_two_rows():
    packed, at = {}, ("ce", 0.8, 40)
    _fill(packed, "DFC random", at, (0.50, 0.60, 0.70))
    _fill(packed, "DFC std (Eq. 2)", at, (0.52, 0.63, 0.71))
    _fill(packed, "FC", at, (0.40, 0.40, 0.40))
    section = mechanism.section(acc.COMMON, packed)
    row = next(line for line in section.splitlines() if "| ce, sym 0.8, 40 ep | DFC std (Eq. 2) − DFC random |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "+2.00 (t +3.5, no)"                   # diffs 2, 3, 1: t = 2 / (1 / √3)
    assert cells[4].startswith("+0.00")                        # val-sel: both at epoch 1 (90 %)
    head = next(line for line in section.splitlines() if line.startswith("| DFC random | 3 |"))
    assert "60.00 ± 10.00" in head and "+20.00 (t +3.5, no)" in head   # against FC's 40, per seed 10, 20, 30
    grad = next(line for line in section.splitlines() if line.startswith("| DFC random | 3 | 2.000 | 6.000 |"))
    assert "-0.500" in grad                                    # epochs 1-5: 1, 2, 3 -> 2; last: 3, 6, 9 -> 6


def test_out_csv_is_refused_for_the_mechanism_grid(tmp_path):
    with pytest.raises(SystemExit, match="--out-csv is for the main and ablation tables"):
        cli.main(["accuracy", "--grid", "mechanism", "--table-only", "--pack-dir", str(tmp_path),
                  "--runs-dir", str(tmp_path / "runs"), "--out-csv", str(tmp_path / "x.csv")])


def test_the_figure_draws_every_packed_head_of_the_setting(tmp_path):
    packed = {}
    assert mechanism.figure(acc.COMMON, packed, str(tmp_path / "none.png")) is None
    for label in ("FC", "DFC random"):
        _fill(packed, label, ("ce", 0.8, 40), (0.5, 0.6, 0.7))
    path = mechanism.figure(acc.COMMON, packed, str(tmp_path / "f.png"))
    assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
