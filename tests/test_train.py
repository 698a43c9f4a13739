"""End-to-end properties of train.py's loop: runs finish with finite losses and valid
files, a step trains through the mask, resume is bit-exact, and --help states every flag.
Runs call train.main(argv) in-process. The command line as a user meets it (exit codes,
one-line errors) is test_cli.py; flag checks and the run folder are test_train_cli.py and
test_runfolder.py."""
import datetime
import json
import math
import os
import signal

import pytest
import torch

import data
import dcm_ref
import diagnostics
import kan
import losses
import nets
import distributed
import train
import train_cli
from conftest import QUICK, new_run, record_value_reads


def run_ok(tmp_path, *flags, name="run"):
    out = str(tmp_path / name)
    assert train.main(QUICK + ["--out", out] + list(flags)) == 0
    return out


def test_final_json_records_when_the_run_finished_in_utc(tmp_path):
    """The benchmark report dates runs by final.json's `finished`, not by file times (a checkout resets those)."""
    stamp = lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = stamp()
    out = run_ok(tmp_path)
    after = stamp()
    finished = json.load(open(os.path.join(out, "final.json")))["finished"]
    assert before <= finished <= after            # same fixed-width format: string order is time order
    datetime.datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def assert_run_files(out, epochs=2):
    for name in ("config.json", "noise_report.json", "final.json", "checkpoint.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    rows = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        assert torch.isfinite(torch.tensor(r["train_loss"]))
    final = json.load(open(os.path.join(out, "final.json")))
    assert 0.0 <= final["test_acc_last"] <= 1.0 and 0.0 <= final["test_acc_best"] <= 1.0
    assert final["test_acc_best"] >= final["test_acc_last"]
    return rows


@pytest.mark.parametrize("head", train_cli.HEADS)
@pytest.mark.parametrize("loss", ["ce", "gce", "anl_ce"])
def test_every_head_and_loss_trains_and_writes_files(tmp_path, head, loss):
    out = run_ok(tmp_path, "--head", head, "--loss", loss)
    rows = assert_run_files(out)
    if head in ("dfc", "dkan"):
        assert abs(rows[-1]["kept"] - 0.1) < 0.01  # row scope: round(0.1*256)/256
    else:
        assert rows[-1]["kept"] == 1.0


@pytest.mark.parametrize("method", ["coteaching", "elr"])
def test_methods_train_and_write_files(tmp_path, method):
    out = run_ok(tmp_path, "--method", method, "--head", "dfc")
    rows = assert_run_files(out)
    if method == "coteaching":
        assert "test_acc_b" in rows[-1]


@pytest.mark.parametrize("head", ["dfc", "dkan"])
def test_a_training_step_trains_through_the_mask(monkeypatch, head):
    """In train.train_step, the logits are the masked head's (dcm_ref.masked_linear /
    kan's masked forward with the head's mask) and masked head entries get exactly
    zero gradient, while kept ones learn: a step that forgets the mask fails here."""
    a = train.build_parser().parse_args(QUICK + ["--head", head, "--keep", "0.2", "--grad-clip", "0"])
    cpu = torch.device("cpu")
    d = data.prepare_training_data(data.DataConfig.from_config(vars(a)), cpu)
    st = train.init_state(a, d, cpu, None)
    h = st.nets[0].head
    seen, real = [], h._logits

    def spy(feats, mask):
        z = real(feats, mask)
        params = {k: v.detach().clone() for k, v in h.named_parameters()}   # before the step changes them
        seen.append((params, feats.detach(), mask, z.detach()))
        return z
    monkeypatch.setattr(h, "_logits", spy)
    idx = torch.arange(64)
    xb = data.to_float(d.x[idx], d.mean, d.std)
    train.train_step(a, st, xb, d.y_noisy[idx], d.ids[idx], losses.make_loss("ce", d.C, a.dataset), 0.0, 1)
    mask = h.mask
    assert 0 < dcm_ref.kept_fraction(mask) < 0.5
    (params, feats, used, z), = seen
    assert torch.equal(used, mask)
    if head == "dfc":
        expect = dcm_ref.masked_linear(feats, params["weight"], params["bias"], mask)
    else:
        expect = kan.kan_forward_features(dict(h.params(), **params), feats, mask)
    torch.testing.assert_close(z, expect, rtol=0, atol=0)
    for k in h._MASKED:
        g = getattr(h, k).grad
        off = (mask == 0).reshape(mask.shape + (1,) * (g.dim() - 2)).expand_as(g)
        assert bool((g[off] == 0).all()) and bool((g[~off] != 0).any())


@pytest.mark.parametrize("flags", [["--head", "fc"], ["--head", "dfc"], ["--head", "dkan"],
                                   ["--method", "coteaching"], ["--method", "elr"]])
def test_a_training_step_reads_no_tensor_value(monkeypatch, flags):
    """On a GPU every read of a tensor's value (int(), float(), bool(), .item(), .tolist()) is a
    host sync: train.py's step makes none (its loss is read with others every READ_LOSSES_EVERY
    steps), nor does the loop between two reads."""
    args, d, st = new_run(flags)
    loss_fn = losses.make_loss(args.loss, d.C, args.dataset)
    idx = torch.arange(64)
    xb = data.to_float(d.x[idx], d.mean, d.std)
    step = lambda: train.train_step(args, st, xb, d.y_noisy[idx], d.ids[idx], loss_fn, 0.0, 1)
    step()                                        # DKAN: the first forward checks the grid once
    reads = record_value_reads(monkeypatch)
    for _ in range(3):
        loss, _ = step()
    monkeypatch.undo()
    assert reads == [] and loss.dim() == 0 and math.isfinite(loss.item())
    monkeypatch.setattr(train, "READ_LOSSES_EVERY", 3)
    reads = record_value_reads(monkeypatch)
    train.train_epoch(args, st, d, 1, 100, loss_fn, 0.0)   # 4 steps: read after the third and at the end
    monkeypatch.undo()
    assert reads == ["tolist", "tolist"]


def _nan_at_call(loss_fn, bad):
    """loss_fn whose call number `bad` (0-based) returns NaN losses."""
    calls = []

    def fn(z, y):
        calls.append(1)
        out = loss_fn(z, y)
        return out * math.nan if len(calls) == bad + 1 else out
    return fn, calls


def test_a_non_finite_loss_stops_the_epoch_at_the_next_read_naming_its_step(monkeypatch):
    args, d, st = new_run([])
    monkeypatch.setattr(train, "READ_LOSSES_EVERY", 2)
    loss_fn, calls = _nan_at_call(losses.make_loss("ce", d.C, args.dataset), 1)
    with pytest.raises(train_cli.NonFiniteLoss, match=r"non-finite training loss \(nan\) at epoch 1, step 1;"):
        train.train_epoch(args, st, d, 1, 100, loss_fn, 0.0)
    assert len(calls) == 2                        # the read after step 1, not the epoch's end


def test_a_non_finite_loss_before_a_stop_signal_still_stops_the_run_as_non_finite():
    """Exit code 3 and nonfinite.json (a --resume may lower --lr), not the resumable stop."""
    args, d, st = new_run([])
    st.stop = train_cli.StopFlag(signal.SIGTERM)  # asked to stop after the first step
    loss_fn, _ = _nan_at_call(losses.make_loss("ce", d.C, args.dataset), 0)
    with pytest.raises(train_cli.NonFiniteLoss, match="step 0;"):
        train.train_epoch(args, st, d, 1, 100, loss_fn, 0.0)


@pytest.mark.parametrize("world", [1, 2])
def test_several_ranks_ask_each_other_for_a_stop_signal_only_with_the_loss_reads(monkeypatch, world):
    """One process checks its stop flag after every step (a host read, no sync); with several
    ranks the check is an all-reduce, a host sync: only every READ_LOSSES_EVERY steps (and after
    the epoch, in runfolder), so a step itself never waits for the other ranks."""
    args, d, st = new_run(["--batch-size", "16"])
    st.stop, st.dist = train_cli.StopFlag(None), distributed.Dist(0, world, 0)
    monkeypatch.setattr(train, "READ_LOSSES_EVERY", 3)
    monkeypatch.setattr(distributed, "all_sum", lambda tensors, dd: tensors)   # the epoch's loss sum
    monkeypatch.setattr(train, "train_step", lambda *a: (torch.tensor(1.0), []))   # the loop, not the step
    checked = []
    monkeypatch.setattr(train_cli, "stop_requested", lambda state: checked.append(state.step) and False)
    train.train_epoch(args, st, d, 1, 100, losses.make_loss("ce", d.C, args.dataset), 0.0)
    steps = len(d.y) // min(args.batch_size, len(d.y))
    assert steps >= 7 and checked == [s for s in range(1, steps + 1) if world == 1 or s % 3 == 0]


def test_co_teaching_networks_draw_their_own_random_masks():
    """--dcm-score random: each co-teaching network's head draws its own subsets (the first one's
    seed is --seed, as in a one-network run), so the two masks differ from the first update on."""
    args, d, st = new_run(["--method", "coteaching", "--dcm-score", "random", "--head", "dfc"])
    heads = [net.head for net in st.nets]
    assert [h.seed for h in heads] == [args.seed, args.seed + train.NET_SEED_STRIDE]
    idx = torch.arange(64)
    loss_fn = losses.make_loss(args.loss, d.C, args.dataset)
    train.train_step(args, st, data.to_float(d.x[idx], d.mean, d.std), d.y_noisy[idx], d.ids[idx], loss_fn, 0.0, 1)
    assert heads[0].updates == heads[1].updates == 1 and not torch.equal(heads[0].mask, heads[1].mask)


def test_the_epoch_loss_is_the_mean_of_the_steps_losses_read_as_python_floats(monkeypatch):
    """train_loss sums loss · samples in step order in Python floats (float64), as one read per
    step did: the same number whatever READ_LOSSES_EVERY."""
    got = []
    for every in (1, 3, 50):
        monkeypatch.setattr(train, "READ_LOSSES_EVERY", every)
        args, d, st = new_run([])
        seen = []
        ce = losses.make_loss("ce", d.C, args.dataset)
        got.append(train.train_epoch(args, st, d, 1, 100, lambda z, y: (seen.append(ce(z, y)), seen[-1])[1], 0.0)[0])
    expect = 0.0
    for out in seen:
        expect += out.mean().item() * len(out)
    assert got == [expect / (64 * 4)] * 3


def test_noise_report_matches_requested_rate(tmp_path):
    out = run_ok(tmp_path, "--noise", "symmetric", "--noise-rate", "0.4", "--epochs", "1")
    rep = json.load(open(os.path.join(out, "noise_report.json")))
    assert abs(rep["rate"] - 0.4) < 0.01 and rep["seed"] == 0


def test_anl_trains_without_weight_decay_and_its_l1_term_shrinks_the_weights(tmp_path):
    """ANL's rule (losses.weight_decay, losses.l1_weight): SGD weight decay 0 for anl_ce, 1e-4 for
    ce; a large delta (the weight of delta * sum |theta|) leaves smaller weights than delta 0."""
    def run(name, *flags):
        out = run_ok(tmp_path, "--epochs", "1", *flags, name=name)
        ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
        return ck["opts"][0]["param_groups"][0]["weight_decay"], sum(t.abs().sum() for t in ck["nets"][0].values()
                                                                      if t.is_floating_point())
    assert run("ce", "--loss", "ce")[0] == 1e-4
    wd, l1_off = run("anl0", "--loss", "anl_ce", "--loss-arg", "delta=0")
    _, l1_on = run("anl1", "--loss", "anl_ce", "--loss-arg", "delta=0.1")
    assert wd == 0.0 and l1_on < 0.95 * l1_off   # 0.91 measured; equal if the term were dropped


def test_default_run_learns_digits_despite_noise(tmp_path):
    """The out-of-the-box experiment must be a real one: far above chance (10%)."""
    out = str(tmp_path / "default")
    assert train.main(["--out", out, "--epochs", "10"]) == 0
    final = json.load(open(os.path.join(out, "final.json")))
    assert final["test_acc_best"] > 0.7


def _comparable(rows):
    drop = {"seconds", "eta_s", "samples_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("flags", [["--head", "dfc", "--dcm-stats", "interval", "--dcm-interval", "3"],
                                   ["--head", "dkan", "--method", "elr"],
                                   ["--head", "dfc", "--method", "coteaching", "--dcm-freeze"],
                                   ["--head", "dkan", "--dcm-score", "random", "--dcm-interval", "2"],
                                   ["--head", "dfc", "--dcm-score", "feature", "--head-dropout", "0.3"]])
def test_resume_ends_exactly_where_an_uninterrupted_run_ends(tmp_path, flags):
    full = run_ok(tmp_path, *flags, "--epochs", "3", name="full")
    part = str(tmp_path / "part")
    assert train.main(QUICK + ["--out", part, "--epochs", "3", "--stop-after", "1"] + flags) == 0
    assert len(read_jsonl(os.path.join(part, "metrics.jsonl"))) == 1
    assert train.main(["--out", part, "--resume", "--epochs", "3"]) == 0
    assert _comparable(read_jsonl(os.path.join(full, "metrics.jsonl"))) == \
        _comparable(read_jsonl(os.path.join(part, "metrics.jsonl")))
    a = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=False)["nets"]
    b = torch.load(os.path.join(part, "checkpoint.pt"), weights_only=False)["nets"]
    for sa, sb in zip(a, b):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_eval_every_skips_only_the_train_set_pass(tmp_path):
    every = read_jsonl(os.path.join(run_ok(tmp_path, "--epochs", "3", name="every"), "metrics.jsonl"))
    sparse = read_jsonl(os.path.join(run_ok(tmp_path, "--epochs", "3", "--train-eval-every", "2", name="sparse"), "metrics.jsonl"))
    never = read_jsonl(os.path.join(run_ok(tmp_path, "--epochs", "3", "--train-eval-every", "0", name="never"), "metrics.jsonl"))
    for key in diagnostics.TRAIN_METRICS:
        assert [r[key] is None for r in sparse] == [True, False, False]   # epoch 2, and the last (3)
        assert [r[key] for r in sparse][1:] == [r[key] for r in every][1:]
        assert all(r[key] is None for r in never) and all(r[key] is not None for r in every)
    other = [k for k in _comparable(every)[0] if k not in diagnostics.TRAIN_METRICS]
    assert [[r[k] for k in other] for r in never] == [[r[k] for k in other] for r in every]   # same training


def test_help_lists_every_flag():
    text = train.build_parser().format_help()
    for action in train.build_parser()._actions:
        for opt in action.option_strings:
            assert opt in text
    for flag in ["--keep", "--dcm-scope", "--dcm-interval", "--dcm-warmup", "--dcm-stats", "--dcm-eval",
                 "--dcm-freeze", "--loss-arg", "--method", "--noise-include-true", "--noise-sampling",
                 "--limit-train", "--resume", "--schedule", "--grad-clip", "--compile", "--amp"]:
        assert flag in text


def test_fashion_mnist_real_smoke_run(tmp_path):
    """CI installs Debian's dataset-fashion-mnist; the real loader and a short run must work."""
    out = run_ok(tmp_path, "--dataset", "fashion-mnist", "--limit-train", "2000", "--epochs", "1")
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["dataset"] == "fashion-mnist" and cfg["n_train"] == 2000
    final = json.load(open(os.path.join(out, "final.json")))
    assert final["test_acc_last"] > 0.3
