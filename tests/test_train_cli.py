"""train_cli.py: the flag checks (one UserError line per bad value or combination), the
no-effect warnings, which flags were typed, the device, the data-size checks, rank-0
output and the stop signals. Functions are called positionally on namespaces from
train.build_parser(); train.main appears only where the device choice meets the user."""
import os
import signal
import sys
import threading
import time

import pytest
import torch

import distributed
import train
import train_cli
from conftest import new_run, one_line, run_in, stop_state

ONE = distributed.Dist()   # a single process


def parse(argv):
    """-> (args, typed flags) as train.main builds them."""
    return train.build_parser().parse_args(argv), train_cli.explicit_flags(train.build_parser(), argv)


# ----------------------------------------------------------------------------- check_args

BAD = [   # argv, the flag the one line must name
    (["--dataset", "imagenet"], "--dataset"), (["--backbone", "vgg"], "--backbone"), (["--head", "conv"], "--head"),
    (["--method", "mixup"], "--method"), (["--loss", "nope"], "--loss"),
    (["--noise-rate", "1.0"], "--noise-rate"), (["--noise-rate", "-0.1"], "--noise-rate"),
    (["--keep", "0"], "--keep"), (["--keep", "1.01"], "--keep"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "1"], "--batch-size"), (["--lr", "0"], "--lr"), (["--dcm-interval", "0"], "--dcm-interval"),
    (["--lr", "1e39"], "--lr"), (["--lr", "nan"], "--lr"), (["--weight-decay", "1e39"], "--weight-decay"),
    (["--dcm-warmup", "-1"], "--dcm-warmup"), (["--limit-train", "-1"], "--limit-train"),
    (["--limit-test", "-1"], "--limit-test"), (["--val-frac", "1"], "--val-frac"),
    (["--weight-decay=-1e-4"], "--weight-decay"), (["--grad-clip", "-1"], "--grad-clip"),
    (["--train-eval-every", "-1"], "--train-eval-every"), (["--samples-per-epoch", "-1"], "--samples-per-epoch"),
    (["--image-size", "4"], "--image-size"), (["--pretrained", "/nonexistent/net.pth"], "--pretrained"),
    (["--kan-grid", "0"], "--kan-grid"), (["--kan-order", "-1"], "--kan-order"),
    (["--forget-rate", "1"], "--forget-rate"), (["--momentum", "1"], "--momentum"),
    (["--seed", str(2 ** 32)], "--seed"), (["--seed", "-1"], "--seed"), (["--threads", "-1"], "--threads"), (["--threads", "100000"], "--threads"), (["--out", ""], "--out is empty"),
    (["--stop-after", "-1"], "--stop-after"), (["--decode-workers", "0"], "--decode-workers"),
    # combinations
    (["--save-masks", "--head", "fc"], "--save-masks"), (["--subset-once"], "--subset-once"),
    (["--resume", "--overwrite"], "--overwrite"), (["--auto-resume", "--resume"], "--auto-resume"),
    (["--auto-resume", "--overwrite"], "--auto-resume"), (["--extend", "--epochs", "5"], "--extend"),
    (["--dataset", "cifar10n"], "--noise none"), (["--dataset", "clothing1m", "--noise", "pairflip"], "--noise none"),
    (["--image-size", "64"], "--image-size"), (["--train-list", "train.txt"], "--train-list"),
    (["--samples-per-epoch", "100", "--dataset", "cifar10"], "--samples-per-epoch"),
]


@pytest.mark.parametrize("argv, flag", BAD)
def test_check_args_refuses_each_bad_value_in_one_line_naming_the_flag(argv, flag):
    with pytest.raises(train_cli.UserError) as e:
        train_cli.check_args(parse(argv)[0])
    assert flag in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [
    [], ["--keep", "1"], ["--noise-rate", "0"], ["--val-frac", "0"], ["--seed", str(2 ** 32 - 1)], ["--momentum", "0"],
    ["--epochs", "1", "--batch-size", "2"], ["--kan-order", "0", "--kan-grid", "1", "--head", "kan"],
    ["--resume", "--extend", "--epochs", "5"], ["--save-masks", "--head", "dkan"], ["--dataset", "cifar10n", "--noise", "none"],
    ["--dataset", "clothing1m", "--noise", "none", "--samples-per-epoch", "100", "--subset-once", "--image-size", "8"],
])
def test_check_args_accepts_the_edges_of_every_range(argv):
    assert train_cli.check_args(parse(argv)[0]) is None


# ----------------------------------------------------------------------------- check_flags

def test_check_flags_returns_the_device_and_the_loss_overrides():
    a, typed = parse(["--loss", "gce", "--loss-arg", "q=0.5", "--device", "cpu"])
    assert train_cli.check_flags(a, typed, ONE) == (torch.device("cpu"), {"q": 0.5})
    a, typed = parse(["--device", "cpu"])
    assert train_cli.check_flags(a, typed, ONE) == (torch.device("cpu"), {})


@pytest.mark.parametrize("argv, needle", [
    (["--loss-arg", "q"], "--loss-arg"), (["--loss-arg", "q=high"], "--loss-arg"),
    (["--loss", "gce", "--loss-arg", "zeta=1"], "zeta"), (["--loss", "sce", "--loss-arg", "q=0.5"], "expected one of alpha, beta"), (["--loss-arg", "q=0.5"], "'ce' has none"),
    (["--keep", "0", "--loss-arg", "q"], "--keep"),              # the values first
    (["--device", "tpu"], "--device"),
    (["--head-dropout", "1"], "--head-dropout must be in [0, 1)"),
    (["--head-dropout", "-0.1"], "--head-dropout must be in [0, 1)"),
])
def test_check_flags_refuses_in_one_line(argv, needle):
    a, typed = parse(argv)
    with pytest.raises(train_cli.UserError) as e:
        train_cli.check_flags(a, typed, ONE)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_check_flags_warns_on_rank_0_only(capsys):
    argv = ["--head", "fc", "--keep", "0.3", "--device", "cpu"]
    train_cli.check_flags(*parse(argv), ONE)
    assert one_line(capsys.readouterr().err) == "train.py: warning: --keep has no effect here: only DCM heads (dfc, dkan) are masked"
    train_cli.check_flags(*parse(argv), distributed.Dist(rank=1, world=2, local_rank=1))
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- flag_warnings, explicit_flags

NO_EFFECT = {   # dest: (the flag typed, a configuration where it does nothing, one where it acts)
    "keep": (["--keep", "0.3"], ["--head", "fc"], ["--head", "dkan"]),
    "dcm_scope": (["--dcm-scope", "global"], ["--head", "kan"], ["--head", "dfc"]),
    "dcm_interval": (["--dcm-interval", "2"], ["--head", "kan"], ["--head", "dfc"]),
    "dcm_warmup": (["--dcm-warmup", "5"], ["--head", "fc"], ["--head", "dfc"]),
    "dcm_stats": (["--dcm-stats", "interval"], ["--head", "fc"], ["--head", "dkan"]),
    "dcm_eval": (["--dcm-eval", "masked"], ["--head", "fc"], ["--head", "dfc"]),
    "dcm_freeze": (["--dcm-freeze"], ["--head", "kan"], ["--head", "dkan"]),
    "dcm_score": (["--dcm-score", "random"], ["--head", "fc"], ["--head", "dkan"]),
    "kan_grid": (["--kan-grid", "7"], ["--head", "dfc"], ["--head", "kan"]),
    "kan_order": (["--kan-order", "2"], ["--head", "fc"], ["--head", "dkan"]),
    "forget_rate": (["--forget-rate", "0.2"], ["--method", "elr"], ["--method", "coteaching"]),
    "noise_rate": (["--noise-rate", "0.2"], ["--noise", "none"], ["--noise", "pairflip"]),
    "noise_include_true": (["--noise-include-true"], ["--noise", "asymmetric"], ["--noise", "symmetric"]),
    "momentum": (["--momentum", "0.5"], ["--optimizer", "adam"], ["--optimizer", "sgd"]),
    "download": (["--download"], ["--dataset", "digits"], ["--dataset", "mnist"]),
}


def test_every_no_effect_rule_has_a_case_here():
    assert sorted(NO_EFFECT) == sorted(key for key, _, _ in train_cli.NO_EFFECT)


@pytest.mark.parametrize("dest", sorted(NO_EFFECT))
def test_a_typed_flag_that_does_nothing_warns_once_and_only_then(dest):
    flag, idle, active = NO_EFFECT[dest]
    a, typed = parse(idle + flag)
    msg, = train_cli.flag_warnings(a, typed)
    assert msg.startswith(f"{flag[0]} has no effect here: ") and "\n" not in msg
    assert train_cli.flag_warnings(a, typed - {dest}) == []       # not typed: the default does nothing, silently
    assert train_cli.flag_warnings(*parse(active + flag)) == []


def test_flag_warnings_lists_each_idle_flag():
    a, typed = parse(["--head", "fc", "--keep", "0.3", "--kan-grid", "3", "--noise", "none", "--noise-rate", "0.1"])
    assert [m.split()[0] for m in train_cli.flag_warnings(a, typed)] == ["--keep", "--kan-grid", "--noise-rate"]


@pytest.mark.parametrize("argv, typed", [
    ([], set()),
    (["--keep", "0.1"], {"keep"}),                                   # typed, though equal to the default
    (["--keep=0.3", "--dcm-freeze", "--loss-arg", "q=1", "--loss-arg", "a=2"], {"keep", "dcm_freeze", "loss_arg"}),
    (["--noise-r", "0.2", "--out", "x", "--resume"], {"noise_rate", "out", "resume"}),   # an abbreviation
])
def test_explicit_flags_are_the_typed_ones(argv, typed):
    assert train_cli.explicit_flags(train.build_parser(), argv) == typed


def test_explicit_flags_leaves_the_parser_as_it_was():
    p = train.build_parser()
    train_cli.explicit_flags(p, ["--keep", "0.3"])
    assert vars(p.parse_args([])) == vars(train.build_parser().parse_args([]))


def test_parse_loss_args():
    assert train_cli.parse_loss_args(["q=0.5", " alpha = 2"]) == {"q": 0.5, "alpha": 2.0}
    assert train_cli.parse_loss_args([]) == {}
    for bad in ("q", "q=", "q=high"):
        with pytest.raises(train_cli.UserError, match="KEY=NUMBER"):
            train_cli.parse_loss_args(["a=1", bad])


# ----------------------------------------------------------------------------- The device

def gpus(monkeypatch, n):
    """Pretend torch sees n GPUs (0: a CPU-only torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("n, name, dd, want", [
    (0, "auto", ONE, "cpu"), (0, "cpu", ONE, "cpu"), (2, "auto", ONE, "cuda"), (2, "cpu", ONE, "cpu"),
    (2, "cuda:1", ONE, "cuda:1"), (2, "cuda", distributed.Dist(1, 2, 1), "cuda:1"),
    (2, "auto", distributed.Dist(3, 4, 1), "cuda:1"), (0, "auto", distributed.Dist(1, 2, 1), "cpu"),
    (0, "cpu", distributed.Dist(1, 2, 1), "cpu"),
])
def test_pick_device(monkeypatch, n, name, dd, want):
    gpus(monkeypatch, n)
    assert train_cli.pick_device(name, dd) == torch.device(want)


@pytest.mark.parametrize("n, name, dd, needle", [
    (0, "cuda", ONE, "sees no GPU"), (0, "cuda:0", ONE, "sees no GPU"), (2, "tpu", ONE, "not a device"),
    *[(0, kind, ONE, "runs on cpu or cuda") for kind in ("mps", "xla", "ipu", "vulkan", "hip", "hpu", "privateuseone",
                                                          "xpu", "mtia", "meta", "lazy")],
    (2, "cuda:2", ONE, "has 2 GPU(s)"),
    (2, "cuda:1", distributed.Dist(1, 2, 1), "cuda:LOCAL_RANK"), (2, "auto", distributed.Dist(2, 4, 2), "LOCAL_RANK 2 has no GPU"),
])
def test_pick_device_refuses_in_one_line(monkeypatch, n, name, dd, needle):
    gpus(monkeypatch, n)
    with pytest.raises(train_cli.UserError) as e:
        train_cli.pick_device(name, dd)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """On every machine: a CPU-only torch is pretended, so the line is checked on GPU machines too."""
    gpus(monkeypatch, 0)
    rc, _, err = run_in(capsys, "--out", str(tmp_path / "x"), "--device", "cuda")
    assert rc == 2 and "CUDA" in one_line(err) and "--device cpu" in err
    assert not os.path.exists(tmp_path / "x")


# ----------------------------------------------------------------------------- check_data_sizes

@pytest.fixture(scope="module")
def digits300():
    """The data of a 300-sample digits run (10 classes)."""
    return new_run([])[1]


@pytest.mark.parametrize("argv, dd, needle", [
    (["--limit-train", "9"], ONE, "below the 10 classes"),
    (["--limit-test", "3"], ONE, "--limit-test 3 is below the 10 classes"),
    (["--batch-size", "63"], distributed.Dist(0, 2, 0), "2 equal per-rank shards"),
    (["--batch-size", "4"], distributed.Dist(0, 4, 0), "4 equal per-rank shards"),     # shards of 1
    (["--batch-size", "999"], distributed.Dist(0, 7, 0), "--batch-size 300 is the global batch"),  # the batch is all 300
])
def test_check_data_sizes_refuses_in_one_line(digits300, argv, dd, needle):
    with pytest.raises(train_cli.UserError) as e:
        train_cli.check_data_sizes(parse(argv)[0], digits300, dd)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, dd, warning", [
    (["--limit-train", "300"], ONE, None), (["--batch-size", "64"], distributed.Dist(0, 4, 0), None),
    (["--batch-size", "300"], distributed.Dist(0, 2, 0), None), (["--limit-train", "10"], ONE, None),
    (["--batch-size", "512"], ONE, "--batch-size 512 exceeds the 300 training samples"),
])
def test_check_data_sizes_accepts_and_warns(digits300, capsys, argv, dd, warning):
    train_cli.check_data_sizes(parse(argv)[0], digits300, dd)
    err = capsys.readouterr().err
    assert (warning in one_line(err)) if warning else err == ""


# ----------------------------------------------------------------------------- Rank-0 output

def test_say_prints_on_rank_0_only(capsys):
    train_cli.make_say(True)("epoch", 1)
    train_cli.make_say(True)("stopped", file=sys.stderr)
    train_cli.make_say(False)("epoch", 1)
    train_cli.make_say(False)("stopped", file=sys.stderr)
    cap = capsys.readouterr()
    assert (cap.out, cap.err) == ("epoch 1\n", "stopped\n")


class ClosedPipe:
    """A stdout whose reader went away (`train.py | head -1`); fileno: a stand-in descriptor."""
    def __init__(self, fd):
        self.fd = fd

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):
        return self.fd


def test_a_closed_stdout_warns_once_then_say_is_silent(tmp_path, capsys, monkeypatch):
    path = tmp_path / "stdout"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(fd))
        say = train_cli.make_say(True)
        say("epoch 1")
        say("epoch 2")
        say("interrupted", file=sys.stderr)         # the lines meant for stderr still come
        os.write(fd, b"flushed at exit")            # the descriptor now leads to /dev/null: no second error
    finally:
        os.close(fd)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "broken pipe" in err[0] and err[0].startswith("train.py: warning:")
    assert err[1] == "interrupted" and path.read_bytes() == b""


# ----------------------------------------------------------------------------- Stop signals

HANDLED = (signal.SIGINT, signal.SIGTERM)


def deliver(sig):
    """Send sig to this process and let Python run its handler."""
    os.kill(os.getpid(), sig)
    for _ in range(200):
        time.sleep(0.005)


def test_stop_signals_set_the_flag_and_a_second_ctrl_c_interrupts():
    before = {s: signal.getsignal(s) for s in HANDLED}
    flag = train_cli.StopFlag()
    restore = train_cli.catch_stop_signals(flag)
    try:
        deliver(signal.SIGINT)
        assert flag.signum == signal.SIGINT               # the first Ctrl-C: stop after this step
        try:
            deliver(signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a SIGTERM after a Ctrl-C interrupted the step")
        assert flag.signum == signal.SIGTERM              # SIGTERM never interrupts a step
        with pytest.raises(KeyboardInterrupt):
            deliver(signal.SIGINT)                       # a second Ctrl-C: at once
    finally:
        restore()
    assert {s: signal.getsignal(s) for s in HANDLED} == before


def test_stop_signals_outside_the_main_thread_change_nothing():
    before = {s: signal.getsignal(s) for s in HANDLED}
    got = []
    t = threading.Thread(target=lambda: got.append(train_cli.catch_stop_signals(train_cli.StopFlag())))
    t.start()
    t.join()
    assert {s: signal.getsignal(s) for s in HANDLED} == before and got[0]() is None


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT"),
                                             (None, 130, "SIGINT")])   # None: a KeyboardInterrupt without the handler
def test_stopped_reports_one_line_and_the_shell_exit_code(capsys, sig, code, name):
    st = stop_state(sig)
    assert train_cli.stop_requested(st) == (sig is not None)
    assert train_cli.stopped(st, train_cli.make_say(True), "runs/x/checkpoint.pt", 4, "runs/x") == code
    cap = capsys.readouterr()
    assert cap.out == "" and one_line(cap.err) == (f"interrupted ({name}): runs/x/checkpoint.pt holds epoch 4; "
                                                   f"continue with --out runs/x --resume")


@pytest.mark.parametrize("mine, peers, code, name", [
    (None, signal.SIGTERM, 143, "SIGTERM"),          # another rank got SIGTERM: this one reports it too
    (signal.SIGINT, signal.SIGTERM, 143, "SIGTERM"),  # different signals: the larger number, on every rank
    (signal.SIGTERM, 0, 143, "SIGTERM"),
    (None, signal.SIGINT, 130, "SIGINT"),
])
def test_every_rank_reports_the_signal_of_the_rank_that_got_one(capsys, monkeypatch, mine, peers, code, name):
    """Rank 0 of 2 ranks; the all-reduce (MAX over ranks) is replaced by the largest of this rank's
    signal number and the peers'. tests/test_distributed.py does it with 2 real ranks."""
    monkeypatch.setattr(distributed, "max_over_ranks", lambda x, dd, device=None: max(x, peers))
    st = stop_state(mine, distributed.Dist(0, 2, 0))
    assert train_cli.stop_requested(st)
    assert train_cli.stopped(st, train_cli.make_say(True), "runs/x/checkpoint.pt", 4, "runs/x") == code
    assert one_line(capsys.readouterr().err).startswith(f"interrupted ({name}):")


def test_no_signal_on_any_rank_is_no_stop(monkeypatch):
    monkeypatch.setattr(distributed, "max_over_ranks", lambda x, dd, device=None: x)
    st = stop_state(None, distributed.Dist(1, 2, 1))
    assert not train_cli.stop_requested(st) and st.stop.signum is None


def test_help_states_every_default_and_never_none():
    """--help shows the default of every flag that has one; flags whose default is None say in
    their own help what unset means, instead of '(default: None)'."""
    parser = train.build_parser()
    text = parser.format_help()
    assert "default: None" not in text
    for action in parser._actions:
        if action.dest in ("help",):
            continue
        shown = parser._get_formatter()._get_help_string(action)
        assert action.help, f"{action.option_strings} has no help text"
        if action.default is not None:
            assert "%(default)s" in shown or "default" in action.help, action.option_strings


# ----------------------------------------------------------------------------- parse, agreed, ExitCode: train.main's harness

def test_parse_returns_the_flags_or_an_exit_code(capsys):
    """parse: (args, argv, Dist) for a run; 0 after --list-presets; 2 and one line for a preset error."""
    args, argv, dd = train_cli.parse(["--keep", "0.3"])
    assert (args.keep, argv, dd) == (0.3, ["--keep", "0.3"], ONE)
    assert train_cli.parse(["--list-presets"]) == 0 and capsys.readouterr().out
    assert train_cli.parse(["--preset", "no-such-preset"]) == 2
    assert one_line(capsys.readouterr().err).startswith("train.py: error:")


def test_defaults_are_the_parsers():
    d = train_cli.defaults()
    assert d == vars(train.build_parser().parse_args([])) and d["keep"] == 0.1 and d["out"] is None


@pytest.mark.parametrize("error, code, needle", [
    (train_cli.UserError("--keep is bad"), 2, "train.py: error: --keep is bad"),
    (train_cli.NonFiniteLoss("nan"), 3, "train.py: error: nan"),
    (distributed.PeerLost("another rank stopped"), 2, "another rank stopped"),
    (OSError(28, "No space left on device", "runs/x/config.json"), 2, "cannot write runs/x/config.json"),
    (KeyboardInterrupt(), 130, "train.py: interrupted"),
    (train_cli.PeerFailed(), 2, ""),
])
def test_exit_code_is_one_line_and_the_code(capsys, error, code, needle):
    with train_cli.ExitCode(ONE) as result:
        raise error
    err = capsys.readouterr().err
    assert result.code == code and needle in err and err.count("\n") == (1 if needle else 0)


def test_exit_code_lets_other_errors_through_and_keeps_a_result():
    with pytest.raises(ZeroDivisionError):
        with train_cli.ExitCode(ONE):
            1 / 0
    with train_cli.ExitCode(ONE) as result:
        result.code = 0
    assert result.code == 0 and train_cli.exit_code(ValueError("x"), ONE) is None


def test_agreed_on_one_process_raises_its_own_error_and_passes_otherwise():
    with pytest.raises(train_cli.UserError, match="mine"):
        with train_cli.agreed(ONE):
            raise train_cli.UserError("mine")
    with train_cli.agreed(ONE):
        pass
    with pytest.raises(RuntimeError):   # not a user error: no agreement, a traceback
        with train_cli.agreed(ONE):
            raise RuntimeError("bug")


def test_agreed_makes_a_rank_whose_peer_failed_raise_peer_failed(monkeypatch):
    """Rank 1 of 2 that succeeded while rank 0 failed: PeerFailed (quiet exit 2); the failing rank raises its own."""
    monkeypatch.setattr(distributed, "first_failure", lambda failed, dd: 0)
    with pytest.raises(train_cli.PeerFailed):
        with train_cli.agreed(distributed.Dist(1, 2, 1)):
            pass
    with pytest.raises(train_cli.UserError, match="rank 0's"):
        with train_cli.agreed(distributed.Dist(0, 2, 0)):
            raise train_cli.UserError("rank 0's")


@pytest.mark.parametrize("argv, says", [(["--keep", "abc"], "argument --keep: invalid float value: 'abc'"),
                                        (["--dcm-stats", "pooled"], "argument --dcm-stats: invalid choice: 'pooled'"),
                                        (["--kep", "0.2"], "unrecognized arguments: --kep 0.2"),
                                        (["--dcm", "5"], "ambiguous option: --dcm could match"),
                                        (["--kan-grid=--"], "argument --kan-grid: expected a number")])
def test_argparse_errors_are_one_line_with_exit_2(capsys, argv, says):
    """argparse's own errors read like train.py's: one line, exit 2, no usage block."""
    rc, out, err = run_in(capsys, *argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("train.py: error: " + says) and "usage" not in err


def test_amp_on_cpu_warns_that_it_does_nothing(capsys):
    """train.py's --amp is CUDA bf16 autocast: on CPU it is said, not silently ignored."""
    args, typed = parse(["--amp", "--device", "cpu"])
    train_cli.check_flags(args, typed, ONE)
    assert "--amp has no effect on cpu" in one_line(capsys.readouterr().err)
    train_cli.check_flags(*parse(["--device", "cpu"]), ONE)
    assert capsys.readouterr().err == ""


def test_a_python_warning_during_a_run_is_one_train_py_warning_line(tmp_path, capsys):
    """noise.py warns (warnings.warn) about a majority-flipping rate: train.py shows it in its own
    one-line format, not Python's two-line "file:line: UserWarning" block."""
    rc, _, err = run_in(capsys, "--noise-rate", "0.99", "--epochs", "1", "--out", str(tmp_path / "run"))
    lines = [line for line in err.splitlines() if "minority" in line]
    assert rc == 0 and len(lines) == 1 and lines[0].startswith("train.py: warning: symmetric noise with rate=0.99")
    assert "UserWarning" not in err


def test_training_labels_of_one_class_are_said_in_one_line(digits300, capsys):
    import dataclasses
    one_class = dataclasses.replace(digits300, y_noisy=torch.full_like(digits300.y_noisy, 3))
    train_cli.check_data_sizes(parse([])[0], one_class, ONE)
    assert "every training label is class 3" in one_line(capsys.readouterr().err)
