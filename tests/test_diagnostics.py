"""Properties of the diagnostics the paper shows: the gradient error of Fig. 3
(diagnostics.label_gradient_error, train.py --track-grad-error) and the mask snapshots of
Fig. 5 (--save-masks). The runs dfc_run / fc_run are conftest.py's; plot.py: test_plot.py."""
import json
import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import data
import dcm_ref as D
import diagnostics
import train

from conftest import QUICK, check_one_line_value_error

KEEPS = st.floats(min_value=0.01, max_value=1.0)
SCALES = st.sampled_from([1.0, 1e3, 1e4])
GRAD_FIELDS = ("grad_cos_last", "grad_cos_feat", "grad_err_feat_norm", "grad_err_feat_bound")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- the pure functions

def test_gradient_cosine_of_known_vectors():
    assert math.isclose(diagnostics.gradient_cosine([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]), 1 / math.sqrt(2))
    # pieces are concatenated: ([1], [0]) vs ([1], [1]) is the same pair of vectors
    assert math.isclose(diagnostics.gradient_cosine([torch.ones(1), torch.zeros(1)], [torch.ones(1), torch.ones(1)]),
                        1 / math.sqrt(2))
    assert math.isclose(diagnostics.gradient_cosine([torch.ones(1), None], [torch.ones(1), torch.ones(1)]), 1 / math.sqrt(2))
    assert diagnostics.gradient_cosine([torch.tensor([2.0, -3.0])], [torch.tensor([-4.0, 6.0])]) == -1.0
    assert diagnostics.gradient_cosine([torch.zeros(3)], [torch.ones(3)]) == 0.0


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(2, 5), st.integers(1, 4), st.integers(1, 5))
def test_label_gradient_error_matches_hand_computed_gradients_of_a_linear_model(seed, B, C, d, n_in):
    """x -> v = x Aᵀ (the 'last layer' A) -> z = v Wᵀ, CE. By hand: ∂L_b/∂z_b = p_b − e_label,
    ∂L_b/∂v_b = (p_b − e_label) W, ∂ΣL/∂A = Σ_b (∂L_b/∂v_b)ᵀ x_b."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n_in, generator=g, dtype=torch.float64)
    A = torch.randn(d, n_in, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(C, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    y_noisy = (y + torch.randint(1, C, (B,), generator=g)) % C          # every label corrupted
    v = x @ A.T
    ge = diagnostics.label_gradient_error(lambda z, t: F.cross_entropy(z, t, reduction="none"), v @ W.T, v, [A], y_noisy, y)

    xn, Wn = x.numpy(), W.numpy()
    z = xn @ A.detach().numpy().T @ Wn.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gv = {k: (p - np.eye(C)[lab.numpy()]) @ Wn for k, lab in (("noisy", y_noisy), ("clean", y))}
    gA = {k: gv[k].T @ xn for k in gv}
    cos = lambda a, b: float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert math.isclose(ge.cos_params, cos(gA["noisy"], gA["clean"]), abs_tol=1e-9)
    for b in range(B):
        assert math.isclose(float(ge.cos_feat[b]), cos(gv["noisy"][b], gv["clean"][b]), abs_tol=1e-9)
    assert np.allclose(ge.err_feat.numpy(), np.linalg.norm(gv["noisy"] - gv["clean"], axis=1), atol=1e-9)


@settings(max_examples=40)
@given(st.integers(0, 2**31 - 1), st.integers(2, 16), st.integers(2, 8), st.integers(4, 64),
       st.floats(0.01, 0.2))
def test_feature_gradient_error_obeys_the_dcm_bound_for_small_keep(seed, B, C, d, keep):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(C, d, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    mask = D.topk_mask(D.edge_scores(v.detach(), w), keep)
    y = torch.randint(0, C, (B,), generator=g)
    y_noisy = (y + torch.randint(1, C, (B,), generator=g)) % C
    logits = D.masked_linear(v, w, b, mask)
    ge = diagnostics.label_gradient_error(lambda z, t: F.cross_entropy(z, t, reduction="none"), logits, v, [w.requires_grad_()],
                                y_noisy, y)
    bound = diagnostics.feature_grad_error_bound(w.detach(), mask)
    assert bool((ge.err_feat <= bound * (1 + 1e-12)).all())
    # and it is exactly the closed form of the core: (W⊙M)[ỹ] − (W⊙M)[y]
    assert torch.allclose(ge.err_feat, diagnostics.feature_grad_error(w.detach(), mask, y, y_noisy).norm(dim=1), atol=1e-12)


def test_label_gradient_error_rejects_labels_of_the_wrong_shape():
    v = torch.randn(3, 2, requires_grad=True)
    ce = lambda z, t: F.cross_entropy(z, t, reduction="none")
    with pytest.raises(ValueError, match="y_noisy"):
        diagnostics.label_gradient_error(ce, v @ torch.ones(2, 2), v, [v], torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="params"):
        diagnostics.label_gradient_error(ce, v @ torch.ones(2, 2), v, [], torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


@given(st.integers(0, 10**6), st.integers(1, 16), st.integers(2, 8), st.integers(1, 12), KEEPS)
def test_ce_feature_gradient_noisy_minus_clean_is_masked_weight_difference(seed, B, C, d, keep):
    """∂CE/∂z = p − e_label, so grad_v(ỹ) − grad_v(y) = (W⊙M)ᵀ(e_y − e_ỹ) per sample."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(C, d, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    M = D.topk_mask(torch.rand(C, d, generator=g, dtype=torch.float64), keep)
    y = torch.randint(C, (B,), generator=g)
    y_noisy = torch.randint(C, (B,), generator=g)

    def grad_v(labels):
        z = D.masked_linear(v, w, b, M)
        return torch.autograd.grad(F.cross_entropy(z, labels, reduction="sum"), v)[0]

    expected = diagnostics.feature_grad_error(w.detach(), M, y, y_noisy)
    torch.testing.assert_close(grad_v(y_noisy) - grad_v(y), expected, rtol=1e-9, atol=1e-12)
    by_hand = (F.one_hot(y, C) - F.one_hot(y_noisy, C)).double() @ (w.detach() * M)
    assert torch.equal(expected, by_hand)


@given(st.integers(0, 10**6), st.integers(1, 16), st.integers(2, 8), st.integers(1, 12), KEEPS,
       st.sampled_from(["row", "global"]), SCALES)
def test_feature_grad_error_is_within_the_bound(seed, B, C, d, keep, scope, scale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, d, generator=g, dtype=torch.float64) * scale
    M = D.topk_mask(torch.rand(C, d, generator=g, dtype=torch.float64), keep, scope)
    y, y_noisy = torch.randint(C, (B,), generator=g), torch.randint(C, (B,), generator=g)
    norms = diagnostics.feature_grad_error(w, M, y, y_noisy).norm(dim=1)
    assert float(norms.max()) <= diagnostics.feature_grad_error_bound(w, M) * (1 + 1e-12)


def test_feature_grad_error_bound_is_attained_and_sqrt_2k_is_not_a_bound():
    """Both rows keep the same k = 2 edges with opposite signs: ‖error‖ = 2·sqrt(k)·max|W|,
    which exceeds the sqrt(2k)·max|W| one might guess from counting 2k non-zeros."""
    w = torch.tensor([[3.0, -3.0, 1.0], [-3.0, 3.0, 1.0]], dtype=torch.float64)
    M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    err = diagnostics.feature_grad_error(w, M, torch.tensor([0]), torch.tensor([1])).norm()
    assert diagnostics.feature_grad_error_bound(w, M) == pytest.approx(2 * math.sqrt(2) * 3.0)
    assert float(err) == pytest.approx(diagnostics.feature_grad_error_bound(w, M))
    assert float(err) > math.sqrt(2 * 2) * 3.0


@given(st.integers(0, 10**6), st.integers(2, 8), st.integers(1, 16),
       st.lists(KEEPS, min_size=2, max_size=5))
def test_nested_masks_shrink_the_bound(seed, C, d, keeps):
    """Masks from the same scores with decreasing keep are nested (each a subset of the
    previous), so the bound 2·sqrt(k)·max|W⊙M| and the triangle bound
    ‖(W⊙M)[y]‖ + ‖(W⊙M)[ỹ]‖ never grow. The error norm itself may grow (see the
    next test), so it is deliberately not claimed to be monotone."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, d, generator=g, dtype=torch.float64)
    S = D.edge_scores(torch.randn(32, d, generator=g, dtype=torch.float64), w)
    masks = [D.topk_mask(S, keep) for keep in sorted(keeps, reverse=True)]
    bounds = [diagnostics.feature_grad_error_bound(w, M) for M in masks]
    row_norms = [(w * M).norm(dim=1) for M in masks]          # triangle bound = sum of two of these
    for i in range(1, len(masks)):
        assert bool((masks[i] <= masks[i - 1]).all())
        assert bounds[i] <= bounds[i - 1]
        assert bool((row_norms[i] <= row_norms[i - 1]).all())


def test_masking_a_cancelling_edge_can_grow_the_error():
    w = torch.tensor([[1.0, 0.5], [1.0, 0.1]], dtype=torch.float64)
    both = torch.ones(2, 2, dtype=torch.float64)
    nested = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    y, y_noisy = torch.tensor([0]), torch.tensor([1])
    before = diagnostics.feature_grad_error(w, both, y, y_noisy).norm()
    after = diagnostics.feature_grad_error(w, nested, y, y_noisy).norm()
    assert after > before

W = torch.randn(2, 3)
BAD_CALLS = {   # what is wrong: (the argument the message must name first, the call)
    "float labels": ("y", lambda: diagnostics.feature_grad_error(W, torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([1, 0]))),
    "2-D noisy labels": ("y_noisy", lambda: diagnostics.feature_grad_error(W, torch.ones(2, 3), torch.tensor([0, 1]), torch.tensor([[1, 0]]))),
    "mask shape": ("mask", lambda: diagnostics.feature_grad_error(W, torch.ones(3, 2), torch.tensor([0]), torch.tensor([1]))),
    "w not 2-D": ("w", lambda: diagnostics.feature_grad_error_bound(torch.ones(6), torch.ones(6))),
    "logits not 2-D": ("logits", lambda: diagnostics.label_gradient_error(None, torch.ones(3), torch.ones(3, 2), [W], None, None)),
    "gradients of different lengths": ("g_b", lambda: diagnostics.gradient_cosine([W], [W, W])),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_a_one_line_value_error_naming_the_argument(name):
    check_one_line_value_error(*BAD_CALLS[name])


# ----------------------------------------------------------------------------- train.py

def test_train_pass_scores_predictions_against_the_noisy_and_the_clean_labels(monkeypatch):
    """Fig. 4's train-set pass: train_acc_noisy counts agreement with the given (noisy) labels,
    train_acc_clean with the true ones, fit_noisy the corrupted samples fitted to their wrong label."""
    y, y_noisy, pred = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])
    z = 10.0 * F.one_hot(pred, 3).float()
    monkeypatch.setattr(diagnostics, "eval_logits", lambda *args, **kwargs: z)
    d = types.SimpleNamespace(x=None, mean=None, std=None, y=y, y_noisy=y_noisy, clean_known=True)
    m = diagnostics.train_metrics(None, d, None)
    assert (m["train_acc_noisy"], m["train_acc_clean"], m["fit_noisy"]) == (1.0, 0.5, 1.0)
    p_right = math.exp(10) / (math.exp(10) + 2)  # softmax of the predicted class
    assert m["conf_clean"] == pytest.approx(p_right) and m["conf_noisy"] == pytest.approx(p_right)


def test_run_logs_the_gradient_error_fields(dfc_run):
    rows = read_jsonl(os.path.join(dfc_run, "metrics.jsonl"))
    for r in rows:
        assert -1.0 <= r["grad_cos_last"] <= 1.0 and -1.0 <= r["grad_cos_feat"] <= 1.0
        assert 0.0 < r["grad_err_feat_norm"] <= r["grad_err_feat_bound"]
        for key in ("conf_clean", "conf_noisy", "fit_noisy", "train_acc_noisy", "train_acc_clean", "kept", "mask_change"):
            assert math.isfinite(r[key])


def test_save_masks_writes_one_bool_mask_per_epoch_with_exact_kept_count(dfc_run):
    names = sorted(os.listdir(os.path.join(dfc_run, "masks")))
    assert names == ["epoch_001.npz", "epoch_002.npz"]
    for name in names:
        with np.load(os.path.join(dfc_run, "masks", name)) as z:
            m = z["mask"]
        assert m.shape == (10, 256) and m.dtype == np.bool_
        assert (m.sum(axis=1) == round(0.1 * 256)).all()  # row scope: every class keeps k inputs


def test_logged_feature_error_is_the_masked_head_error_on_the_probe_set(dfc_run):
    """Recompute from the checkpoint: the probe is a fixed set of corrupted samples and the
    gradient goes through the CURRENT training mask (CE: error = (W⊙M)[ỹ] − (W⊙M)[y])."""
    a = train.build_parser().parse_args(QUICK)
    d = data.prepare_training_data(data.DataConfig.from_config(vars(a)), torch.device("cpu"))
    probe = diagnostics.grad_probe(d, a.seed, a.track_grad_error, a.dataset)
    assert 0 < len(probe) <= diagnostics.PROBE_SIZE and bool((d.y_noisy[probe] != d.y[probe]).all())
    assert torch.equal(probe, diagnostics.grad_probe(d, a.seed, a.track_grad_error, a.dataset))
    ck = torch.load(os.path.join(dfc_run, "checkpoint.pt"), weights_only=False)
    w, mask = ck["nets"][0]["head.weight"], ck["nets"][0]["head.mask"]
    expected = diagnostics.feature_grad_error(w, mask, d.y[probe], d.y_noisy[probe]).norm(dim=1).mean()
    last = read_jsonl(os.path.join(dfc_run, "metrics.jsonl"))[-1]
    assert math.isclose(last["grad_err_feat_norm"], float(expected), rel_tol=1e-5)


def test_tracking_the_gradient_error_leaves_the_training_trajectory_unchanged(tmp_path, dfc_run):
    out = str(tmp_path / "off")
    assert train.main(QUICK + ["--out", out, "--no-track-grad-error"]) == 0
    drop = set(GRAD_FIELDS) | {"seconds", "eta_s", "samples_per_s"}
    keep = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]
    off = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert all(r[k] is None for r in off for k in GRAD_FIELDS)
    assert keep(off) == keep(read_jsonl(os.path.join(dfc_run, "metrics.jsonl")))
    a = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["nets"][0]
    b = torch.load(os.path.join(dfc_run, "checkpoint.pt"), weights_only=False)["nets"][0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_error_is_off_by_default_without_corrupted_labels(tmp_path, capsys):
    out = str(tmp_path / "clean")
    assert train.main(QUICK + ["--out", out, "--noise", "none", "--epochs", "1"]) == 0
    assert all(r[k] is None for r in read_jsonl(os.path.join(out, "metrics.jsonl")) for k in GRAD_FIELDS)
    capsys.readouterr()
    assert train.main(QUICK + ["--out", str(tmp_path / "x"), "--noise", "none", "--track-grad-error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--track-grad-error" in err[0]


def test_save_masks_without_a_dcm_head_is_a_one_line_error(tmp_path, capsys):
    assert train.main(QUICK + ["--out", str(tmp_path / "x"), "--head", "fc", "--save-masks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-masks" in err[0]


# head -> whether --dcm-eval masked evaluates with the mask (DCM heads only), written out.
EVAL_MASKED = {"fc": False, "dfc": True, "kan": False, "dkan": True}


@pytest.mark.parametrize("dcm_eval", ["full", "masked"])
@pytest.mark.parametrize("head", sorted(EVAL_MASKED))
def test_eval_logits_use_the_mask_for_dcm_heads_with_dcm_eval_masked_only(head, dcm_eval):
    """eval_logits (N, C): the full head, except a DCM head under --dcm-eval masked, which
    is evaluated with its last mask (C, d)."""
    args = train.build_parser().parse_args(["--head", head, "--dcm-eval", dcm_eval])
    torch.manual_seed(0)
    net = train.build_net(args, (1, 8, 8), 4)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    mask = (torch.rand(4, net.backbone.feature_dim) < 0.3).float()
    if EVAL_MASKED[head]:
        net.head.mask.copy_(mask)
    z = diagnostics.eval_logits(net, x, (0.5,), (0.25,))
    assert net.training   # back in train mode
    net.eval()
    with torch.no_grad():
        feats = net.backbone(data.to_float(x, (0.5,), (0.25,)))
        m = mask if (EVAL_MASKED[head] and dcm_eval == "masked") else None
        if head in ("fc", "dfc"):
            expect = D.masked_linear(feats, net.head.weight, net.head.bias, m)
        else:
            import kan
            p = net.head.params()
            expect = kan.kan_forward_features(p, kan.dkan_features(p, feats) if getattr(net.head, "layer_norm", True) else kan.kan_features(p, feats), m)
    assert z.shape == (6, 4)
    torch.testing.assert_close(z, expect.float(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- the metrics row's parts and lines

def test_train_eval_due_every_n_epochs_and_at_the_last():
    assert [e for e in range(1, 8) if diagnostics.train_eval_due(e, 7, 3)] == [3, 6, 7]
    assert [e for e in range(1, 8) if diagnostics.train_eval_due(e, 7, 1)] == list(range(1, 8))
    assert not any(diagnostics.train_eval_due(e, 7, 0) for e in range(1, 8))


def test_mask_metrics_of_an_unmasked_and_a_masked_head():
    import layers
    fc = torch.nn.Linear(4, 3)
    assert diagnostics.mask_metrics(fc, []) == dict(kept=1.0, mask_change=0.0, mask_updates=0)
    head = layers.DCMLinear(10, 3, keep=0.3)
    m = diagnostics.mask_metrics(head, [torch.tensor(0.25), torch.tensor(0.75)])
    assert m["mask_change"] == 0.5 and m["mask_updates"] == head.updates
    assert m["kept"] == D.kept_fraction(head.mask)


def test_epoch_line_shows_gcos_only_when_measured():
    row = dict(epoch=3, lr=0.01, train_loss=0.5, train_acc_noisy=0.9, train_acc_clean=None, test_acc=0.8,
               kept=0.1, mask_change=0.0, grad_cos_last=None, seconds=1.0, eta_s=2.0)
    assert diagnostics.epoch_line(row, 5).startswith("epoch   3/5  ") and "gcos" not in diagnostics.epoch_line(row, 5)
    assert "gcos -0.50" in diagnostics.epoch_line(dict(row, grad_cos_last=-0.5), 5)
    assert "val(noisy)  70.0%" in diagnostics.epoch_line(dict(row, val_acc_noisy=0.7), 5)
