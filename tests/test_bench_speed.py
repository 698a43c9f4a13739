"""bench/speed.py (`python -m bench speed`): the CLI runs and prints the expected markdown table
(structure only, never timings: speed is measured by the benchmark, not asserted by tests). Each
run is a subprocess, so the benchmark's torch.set_num_threads(1) cannot leak into other tests."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench import cli, speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARISONS = (
    "DFC / FC head fwd+bwd",
    "DFC / FC train step (mlp backbone)",
    "DFC / FC 10 train steps, mask every 10 (mlp backbone)",
    "DCMLinear / nn.Linear train step (mlp backbone)",
    "score literal / fast: time",
    "score literal / fast: peak memory",
    "KAN closed / Cox–de Boor fwd+bwd",
    "KAN closed / nn.Linear fwd+bwd",
    "DKAN score literal / fast: time",
    "DKAN score literal / fast: peak memory",
)


def run_bench(*args):
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def table_rows(text):
    """Data rows of the markdown table as lists of cells (header and rule excluded)."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    assert len(lines) >= 2 and set(lines[1].replace("|", "").split()) == {"---"}
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "speed.md"
    return run_bench("speed", "--quick", "--out", str(out)), out


def test_quick_table_has_every_comparison_once_per_quick_shape(quick):
    rows = table_rows(quick[0])
    got = sorted((r[0], r[1]) for r in rows)
    shapes = ["(" + ", ".join(map(str, s)) + ")" for s in speed.QUICK_SHAPES]
    assert got == sorted((c, s) for c in COMPARISONS for s in shapes)


def test_quick_table_rows_have_six_cells_and_positive_ratios(quick):
    for r in table_rows(quick[0]):
        assert len(r) == len(speed.COLUMNS)
        assert float(r[4]) > 0


def test_quick_table_header_names_the_columns(quick):
    header = next(l for l in quick[0].splitlines() if l.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == [t for _, t in speed.COLUMNS]


def test_out_file_holds_exactly_what_was_printed(quick):
    printed, out = quick
    assert out.read_text() == printed


def test_output_states_machine_threads_and_command(quick):
    text = quick[0]
    assert re.search(r"torch \S+, 1 thread\(s\), device cpu", text)
    assert "Command: python -m bench speed --quick --out" in text


def test_literal_forms_over_the_memory_limit_are_skipped_and_say_so():
    rows = table_rows(run_bench("speed", "--quick", "--max-literal-gb", "0"))
    literal = [r for r in rows if "literal" in r[0]]
    assert len(literal) == 4 * len(speed.QUICK_SHAPES)
    assert all(r[4].startswith("skipped: literal needs") for r in literal)
    assert all(not r[4].startswith("skipped") for r in rows if "literal" not in r[0])


def test_accuracy_without_grid_launches_nothing_and_says_how(tmp_path):
    """The grid takes CPU-hours: a bare `python -m bench accuracy` must not start it."""
    with pytest.raises(SystemExit, match="--grid"):
        cli.main(["accuracy", "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_paired_ratio_is_the_median_of_same_round_ratios():
    assert speed.paired_ratio([1.0, 2.0, 30.0], [1.0, 1.0, 1.0]) == 2.0
    assert speed.paired_ratio([2.0, 4.0], [1.0, 4.0]) == 1.5


SPEED_DRIVER = """import itertools, sys, time
sys.path.insert(0, {repo!r})
from bench import cli, speed
real = speed.speed_rows

def two_rows_then_hang(shape, device, cfg):
    yield from itertools.islice(real(shape, device, cfg), 2)
    open({started!r}, "w").close()
    time.sleep(120)
speed.speed_rows = two_rows_then_hang
cli.main(["speed", "--quick", "--out", {out!r}])
"""


def test_out_file_keeps_the_rows_measured_before_a_time_limit_kills_the_run(tmp_path):
    out, started = tmp_path / "speed.md", tmp_path / "started"
    driver = SPEED_DRIVER.format(repo=ROOT, started=str(started), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)   # what `timeout` sends
    proc.communicate(timeout=30)
    text = out.read_text()
    assert text.startswith("Machine: ") and [r[0] for r in table_rows(text)] == [
        "DFC / FC head fwd+bwd", "DFC / FC train step (mlp backbone)"]


def test_out_in_a_missing_folder_is_one_line_before_any_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "speed_rows", lambda *a: pytest.fail("measured before checking --out"))
    with pytest.raises(SystemExit, match="--out .*: no folder .*missing$"):
        cli.main(["speed", "--quick", "--out", str(tmp_path / "missing" / "speed.md")])
