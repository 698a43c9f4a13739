"""Properties of losses.py: closed forms, symmetry/normalisation identities, limits,
float32 stability at extreme logits, the defaults table, ELR and co-teaching."""
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import losses as L

C10 = {n: L.loss_config(n, 10, "cifar10") for n in L.LOSSES}
NEG_A = -math.log(1e-4)                      # RCE's -A = 9.2103


def hp_of(name):
    """The CIFAR-10 hyper-parameters of a loss, without ANL's delta."""
    return {k: v for k, v in C10[name].items() if k != "delta"}


def call(name, z, y, **hp):
    return L.LOSSES[name](z, y, **{**hp_of(name), **hp})


# Parts of the mixed losses: name -> (active, passive), weighted alpha, beta.
MIXES = {"sce": ("ce", "rce"), "nce_rce": ("nce", "rce"), "nce_mae": ("nce", "mae"),
         "nce_agce": ("nce", "agce"), "anl_ce": ("nce", "nnce"), "anl_fl": ("nfl", "nnfl")}
# Placeholders for hyper-parameters a part does not take.
NEUTRAL = dict(q=1.0, gamma=0.0, a=2.0, min_prob=1e-7)


def literal(name, p, y, hp):
    """Published formulas written literally on probabilities p (B, C), float64 (cross-check)."""
    if name in MIXES:
        first, second = MIXES[name]
        return hp["alpha"] * literal(first, p, y, hp) + hp["beta"] * literal(second, p, y, hp)
    h = {**NEUTRAL, **hp}
    q, g, a, mp = h["q"], h["gamma"], h["a"], h["min_prob"]
    at_y = lambda t: t.gather(1, y[:, None])[:, 0]              # noqa: E731
    p_y, lp, pc = at_y(p), p.log(), p.clamp(mp, 1)
    fl_k = -(1 - p) ** g * lp
    nn_k = -math.log(mp) + pc.log()
    nnf_k = torch.where(p > mp, -(1 - mp) ** g * math.log(mp) + (1 - pc) ** g * pc.log(), 0)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    formulas = {
        "ce": lambda: -p_y.log(),
        "mae": lambda: 1 - p_y,
        "gce": lambda: (1 - p_y.clamp(1e-7, 1) ** q) / q,
        "rce": lambda: -(p * onehot.clamp(1e-4, 1).log()).sum(1),
        "nce": lambda: -p_y.log() / -lp.sum(1),
        "fl": lambda: at_y(fl_k),
        "nfl": lambda: at_y(fl_k) / fl_k.sum(1),
        "nnce": lambda: 1 - at_y(nn_k) / nn_k.sum(1),
        "nnfl": lambda: 1 - at_y(nnf_k) / nnf_k.sum(1),
        "agce": lambda: ((a + 1) ** q - (a + p_y) ** q) / q,
        "aul": lambda: ((a - p_y) ** q - (a - 1) ** q) / q,
        "ael": lambda: torch.exp(-p_y / a),
    }
    return formulas[name]()


logit_rows = st.lists(st.floats(-8, 8, width=32), min_size=4, max_size=4)
batches = st.lists(st.tuples(logit_rows, st.integers(0, 3)), min_size=1, max_size=5)


def as_tensors(batch, dtype=torch.float32):
    z = torch.tensor([row for row, _ in batch], dtype=dtype)
    y = torch.tensor([label for _, label in batch], dtype=torch.int64)
    return z, y


# ------------------------------------------------------------- shapes, values --
@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_every_loss_returns_one_value_per_sample(name):
    z, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    assert call(name, z, y).shape == (7,)


@pytest.mark.parametrize("name", sorted(L.LOSSES))
@settings(max_examples=10)
@given(batch=batches)
def test_every_loss_matches_its_published_formula_in_float64(name, batch):
    z, y = as_tensors(batch, torch.float64)
    got = call(name, z, y)
    want = literal(name, torch.softmax(z, 1), y, hp_of(name))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(MIXES))
@settings(max_examples=10)
@given(batch=batches)
def test_mixed_losses_weigh_their_parts_by_alpha_and_beta_when_they_differ(name, batch):
    """The CIFAR-10 defaults of several mixes have alpha == beta (anl_ce: 5, 5), where a swap
    of the two weights cannot show; here alpha = 3·beta' and beta = 0.25 (mutation testing
    found the swap unseen)."""
    z, y = as_tensors(batch, torch.float64)
    hp = dict(hp_of(name), alpha=3.0, beta=0.25)
    got = L.LOSSES[name](z, y, **hp)
    torch.testing.assert_close(got, literal(name, torch.softmax(z, 1), y, hp), rtol=1e-9, atol=1e-9)


def closed_form_uniform(name, c, hp):
    """Value at uniform logits, p_k = 1/C, by hand (scalar arithmetic)."""
    if name in MIXES:
        first, second = MIXES[name]
        return (hp["alpha"] * closed_form_uniform(first, c, hp)
                + hp["beta"] * closed_form_uniform(second, c, hp))
    h = {**NEUTRAL, **hp}
    q, g, a, u = h["q"], h["gamma"], h["a"], 1.0 / c
    return {
        "ce": math.log(c), "mae": 1 - u, "rce": NEG_A * (1 - u), "nce": u, "nfl": u,
        "gce": (1 - u ** q) / q, "fl": (1 - u) ** g * math.log(c), "nnce": 1 - u, "nnfl": 1 - u,
        "agce": ((a + 1) ** q - (a + u) ** q) / q, "aul": ((a - u) ** q - (a - 1) ** q) / q,
        "ael": math.exp(-u / a),
    }[name]


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_uniform_logits_give_the_hand_computed_value(name):
    z, y = torch.full((3, 10), 2.5), torch.tensor([0, 4, 9])
    want = closed_form_uniform(name, 10, hp_of(name))
    torch.testing.assert_close(call(name, z, y), torch.full((3,), want), rtol=1e-5, atol=1e-5)


# value when p_y = 1 exactly (logit 1e4 on the label), by hand
AT_CERTAIN_RIGHT = {"ael": math.exp(-1 / C10["ael"]["a"])}
# value when p_y = 0 exactly (logit 1e4 on another class j), C = 4, by hand
_G, _AG, _QG = C10["gce"]["q"], C10["agce"]["a"], C10["agce"]["q"]
_AU, _QU = C10["aul"]["a"], C10["aul"]["q"]
AT_CERTAIN_WRONG = {
    "ce": 1e4, "mae": 1.0, "rce": NEG_A, "nce": 1 / 3, "nnce": 1.0, "nnfl": 1.0,
    "gce": (1 - 1e-7 ** _G) / _G, "fl": 1e4, "nfl": 1 / 3,
    "agce": ((_AG + 1) ** _QG - _AG ** _QG) / _QG,
    "aul": (_AU ** _QU - (_AU - 1) ** _QU) / _QU,
    "ael": 1.0,
}


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_one_hot_logits_on_the_label_give_the_hand_computed_value(name):
    z, y = torch.tensor([[0.0, 1e4, 0.0, 0.0]]), torch.tensor([1])
    want = AT_CERTAIN_RIGHT.get(name, 0.0)   # every other loss vanishes at p_y = 1
    torch.testing.assert_close(call(name, z, y), torch.tensor([want]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(AT_CERTAIN_WRONG))
def test_one_hot_logits_on_a_wrong_class_give_the_hand_computed_value(name):
    z, y = torch.tensor([[0.0, 1e4, 0.0, 0.0]]), torch.tensor([2])
    # tight enough to see gce's p >= 1e-7 clamp (a 1e-5 relative effect at q = 0.7)
    torch.testing.assert_close(call(name, z, y), torch.tensor([AT_CERTAIN_WRONG[name]]),
                               rtol=2e-6, atol=1e-6)


# ---------------------------------------------------- symmetry and normalisation --
def over_all_labels(name, z, **hp):
    """sum_j loss(z, j): z (B, C) -> (B,)."""
    c = z.shape[1]
    return sum(call(name, z, torch.full((z.shape[0],), j), **hp) for j in range(c))


@settings(max_examples=20)
@given(batch=batches)
def test_mae_summed_over_labels_is_constant(batch):
    z, _ = as_tensors(batch)
    torch.testing.assert_close(over_all_labels("mae", z), torch.full((len(batch),), 3.0))


@settings(max_examples=20)
@given(batch=batches)
def test_rce_summed_over_labels_is_constant(batch):
    z, _ = as_tensors(batch)
    torch.testing.assert_close(over_all_labels("rce", z), torch.full((len(batch),), 3 * NEG_A))


@settings(max_examples=20)
@given(batch=batches)
def test_nce_summed_over_labels_is_one(batch):
    z, _ = as_tensors(batch)
    torch.testing.assert_close(over_all_labels("nce", z), torch.ones(len(batch)))


@settings(max_examples=20)
@given(batch=batches)
def test_nfl_summed_over_labels_is_one(batch):
    z, _ = as_tensors(batch)
    torch.testing.assert_close(over_all_labels("nfl", z), torch.ones(len(batch)))


@pytest.mark.parametrize("name", ["nce", "nfl", "nnce", "nnfl"])
@settings(max_examples=20)
@given(batch=batches, scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_normalised_losses_lie_in_unit_interval(name, batch, scale):
    z, y = as_tensors(batch)
    v = call(name, z * scale, y)
    assert bool(((v >= 0) & (v <= 1 + 1e-6)).all()), v


# --------------------------------------------------------------- limits --
@settings(max_examples=20)
@given(batch=batches)
def test_gce_with_q_one_is_mae(batch):
    z, y = as_tensors(batch)
    torch.testing.assert_close(L.gce(z, y, q=1.0), L.mae(z, y))


@settings(max_examples=20)
@given(batch=batches)
def test_gce_tends_to_ce_as_q_goes_to_zero(batch):
    z, y = as_tensors(batch, torch.float64)
    torch.testing.assert_close(L.gce(z, y, q=1e-6), L.ce(z, y), rtol=1e-4, atol=1e-4)


@settings(max_examples=20)
@given(batch=batches, alpha=st.floats(0.01, 10))
def test_sce_with_beta_zero_is_alpha_times_ce(batch, alpha):
    z, y = as_tensors(batch)
    torch.testing.assert_close(L.sce(z, y, alpha=alpha, beta=0.0), alpha * L.ce(z, y))


@settings(max_examples=20)
@given(batch=batches)
def test_focal_losses_with_gamma_zero_are_their_ce_counterparts(batch):
    z, y = as_tensors(batch)
    torch.testing.assert_close(L.fl(z, y, gamma=0.0), L.ce(z, y))
    torch.testing.assert_close(L.nfl(z, y, gamma=0.0), L.nce(z, y))
    torch.testing.assert_close(L.nnfl(z, y, gamma=0.0, min_prob=1e-7), L.nnce(z, y, min_prob=1e-7))


def test_nfl_gradient_ignores_the_focal_factors():
    # with the (1-p)^gamma factors detached the gradient equals that of the fixed-weight ratio
    z, y = torch.randn(4, 5, dtype=torch.float64, requires_grad=True), torch.tensor([0, 1, 2, 3])
    g, = torch.autograd.grad(L.nfl(z, y, gamma=0.5).sum(), z)
    w = (1 - torch.softmax(z, 1)).detach() ** 0.5
    lp = torch.log_softmax(z, 1)
    ref = (w * lp).gather(1, y[:, None])[:, 0] / (w * lp).sum(1)
    g_ref, = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(g, g_ref)


def test_fl_gradient_flows_through_the_focal_factor():
    # docs/design.md §4 [choice]: Lin et al.'s gradient, not APL's detached (1 - p_t)^gamma
    z, y = torch.randn(4, 5, dtype=torch.float64, requires_grad=True), torch.tensor([0, 1, 2, 3])
    g, = torch.autograd.grad(L.fl(z, y, gamma=2.0).sum(), z)
    p_y = torch.softmax(z, 1).gather(1, y[:, None])[:, 0]
    g_ref, = torch.autograd.grad((-(1 - p_y) ** 2 * p_y.log()).sum(), z)
    torch.testing.assert_close(g, g_ref)


@settings(max_examples=20)
@given(batch=batches, scale=st.sampled_from([1.0, 1e3, 1e4]))
def test_log1m_softmax_matches_float64_reference(batch, scale):
    z, _ = as_tensors(batch)
    z = z * scale
    z64 = z.double()
    # reference: log sum_{j != k} p_j, exact in float64 for these ranges
    ref = torch.stack([torch.logsumexp(torch.cat([z64[:, :k], z64[:, k + 1:]], 1), 1)
                       for k in range(z.shape[1])], 1) - torch.logsumexp(z64, 1, keepdim=True)
    got = L.log1m_softmax(z).double()
    assert bool(torch.isfinite(got).all())
    # float32 logits of size s carry an absolute error ~ulp(s), as log_softmax does
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 + 4e-7 * scale)


# ---------------------------------------------------------------- numerics --
extreme_rows = st.lists(st.sampled_from([-1e4, -30.0, 0.0, 1e-3, 30.0, 1e4]),
                        min_size=3, max_size=3)


@pytest.mark.parametrize("name", sorted(L.LOSSES))
@settings(max_examples=15)
@given(rows=st.lists(st.tuples(extreme_rows, st.integers(0, 2)), min_size=1, max_size=4))
def test_float32_extreme_logits_give_finite_losses_and_gradients(name, rows):
    z, y = as_tensors(rows)
    z.requires_grad_(True)
    v = call(name, z, y)
    g, = torch.autograd.grad(v.sum(), z)
    assert bool(torch.isfinite(v).all()) and bool(torch.isfinite(g).all()), (v, g)


def test_elr_is_finite_with_finite_gradients_at_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], requires_grad=True)
    t = torch.tensor([[0.99, 0.005, 0.005], [0.0, 1.0, 0.0]])
    v, _ = L.elr_loss(z, torch.tensor([0, 1]), t, 0.0, 3.0)
    g, = torch.autograd.grad(v.sum(), z)
    assert bool(torch.isfinite(v).all()) and bool(torch.isfinite(g).all())


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_losses_do_not_modify_their_inputs(name):
    z, y = torch.randn(3, 4), torch.tensor([0, 3, 1])
    z0, y0 = z.clone(), y.clone()
    call(name, z, y)
    assert torch.equal(z, z0) and torch.equal(y, y0)


@pytest.mark.parametrize("bad_target", [torch.tensor([0, 4]), torch.tensor([0, -1]),
                                        torch.tensor([0.0, 1.0]), torch.tensor([0])])
def test_bad_targets_raise_value_error(bad_target):
    with pytest.raises(ValueError, match="target"):
        L.ce(torch.zeros(2, 4), bad_target)


def test_bad_logits_raise_value_error():
    with pytest.raises(ValueError, match="logits"):
        L.ce(torch.zeros(2, 1), torch.tensor([0, 0]))


@pytest.mark.parametrize("name, hp", [
    ("gce", dict(q=0.0)), ("gce", dict(q=1.5)), ("aul", dict(a=1.0)), ("agce", dict(a=-1.0)),
    ("nnce", dict(min_prob=1.0)), ("fl", dict(gamma=-1.0)), ("ael", dict(a=0.0))])
def test_hyper_parameters_outside_their_domain_raise_value_error(name, hp):
    with pytest.raises(ValueError, match=next(iter(hp))):
        call(name, torch.zeros(2, 3), torch.tensor([0, 1]), **hp)


# ------------------------------------------------------- argument types --
Z, Y, T3 = torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3)
BAD_NUMBERS = [None, "0.5", True, np.bool_(True), torch.ones(2), [0.5]]


def bad_hyper_parameter_cases():
    """(id, thunk, argument name): each loss's hyper-parameters given a non-number."""
    cases = []
    for name in sorted(L.LOSSES):
        for key in hp_of(name):
            for i, bad in enumerate(BAD_NUMBERS):
                thunk = lambda n=name, k=key, b=bad: call(n, Z, Y, **{k: b})  # noqa: E731
                cases.append(pytest.param(thunk, key, id=f"{name}-{key}-{i}"))
    return cases


BAD_ARGUMENTS = [  # (thunk, the argument its ValueError must name)
    *[pytest.param(lambda n=n, z=z: L.LOSSES[n](z, Y, **hp_of(n)), "logits", id=f"{n}-logits-{i}")
      for n in sorted(L.LOSSES) for i, z in enumerate([None, Z.numpy(), [[0.0, 1.0, 2.0]] * 2])],
    *[pytest.param(lambda n=n, y=y: L.LOSSES[n](Z, y, **hp_of(n)), "target", id=f"{n}-target-{i}")
      for n in sorted(L.LOSSES) for i, y in enumerate([None, [0, 1], Y.numpy()])],
    pytest.param(lambda: L.log1m_softmax([[0.0, 1.0]]), "logits", id="log1m_softmax"),
    pytest.param(lambda: L.make_loss("gce", 10, "cifar10", q="0.7"), "q", id="make_loss-q-str"),
    pytest.param(lambda: L.make_loss("fl", 10, "cifar10", gamma=True), "gamma", id="make_loss-gamma-bool"),
    pytest.param(lambda: L.make_loss(["gce"], 10, "cifar10"), "name", id="make_loss-name-list"),
    pytest.param(lambda: L.make_loss("gce", "10", "cifar10"), "num_classes", id="make_loss-C-str"),
    pytest.param(lambda: L.make_loss("gce", True, "cifar10"), "num_classes", id="make_loss-C-bool"),
    pytest.param(lambda: L.loss_config("gce", 10, ["cifar10"]), "dataset", id="loss_config-dataset-list"),
    pytest.param(lambda: L.loss_config("sce", 10, "cifar10", alpha="1"), "alpha", id="loss_config-alpha"),
    pytest.param(lambda: L.loss_config("gce", 10.0, "cifar10"), "num_classes", id="loss_config-C-float"),
    pytest.param(lambda: L.elr_loss(Z, Y, None, 0.7, 3.0), "t_batch", id="elr-t-None"),
    pytest.param(lambda: L.elr_loss(Z, Y, T3.numpy(), 0.7, 3.0), "t_batch", id="elr-t-numpy"),
    pytest.param(lambda: L.elr_loss(Z, Y, T3, None, 3.0), "beta", id="elr-beta"),
    pytest.param(lambda: L.elr_loss(Z, Y, T3, 0.7, "3"), "lam", id="elr-lam"),
    pytest.param(lambda: L.elr_loss(None, Y, T3, 0.7, 3.0), "logits", id="elr-logits"),
    pytest.param(lambda: L.elr_loss(Z, [0, 1], T3, 0.7, 3.0), "target", id="elr-target"),
    pytest.param(lambda: L.forget_rate(3, None), "tau", id="forget_rate-tau-None"),
    pytest.param(lambda: L.forget_rate(3, True), "tau", id="forget_rate-tau-bool"),
    pytest.param(lambda: L.forget_rate(None, 0.4), "epoch", id="forget_rate-epoch"),
    pytest.param(lambda: L.forget_rate(3, 0.4, t_k="10"), "t_k", id="forget_rate-t_k"),
    pytest.param(lambda: L.forget_rate(3, 0.4, c=None), "c", id="forget_rate-c"),
    pytest.param(lambda: L.num_kept(None, 0.2), "batch_size", id="num_kept-B-None"),
    pytest.param(lambda: L.num_kept(10.0, 0.2), "batch_size", id="num_kept-B-float"),
    pytest.param(lambda: L.num_kept(10, "0.2"), "forget_rate", id="num_kept-rate"),
    pytest.param(lambda: L.coteaching_select(None, Y.float(), 0.2), "loss_a", id="coteaching-a"),
    pytest.param(lambda: L.coteaching_select(Y.float(), [0.0, 1.0], 0.2), "loss_b", id="coteaching-b"),
    pytest.param(lambda: L.coteaching_select(Y.float(), Y.float(), None), "forget_rate", id="coteaching-rate"),
    pytest.param(lambda: L.l1_penalty(None), "params", id="l1_penalty-None"),
    pytest.param(lambda: L.l1_penalty([torch.ones(2), 3.0]), "params", id="l1_penalty-float-item"),
    pytest.param(lambda: L.weight_decay("ce", "1e-4"), "requested", id="weight_decay-str"),
    pytest.param(lambda: L.l1_weight("anl_ce", None), "config", id="l1_weight-config"),
    pytest.param(lambda: L.l1_weight("anl_ce", {"delta": "5e-5"}), "delta", id="l1_weight-delta"),
    *bad_hyper_parameter_cases(),
]


@pytest.mark.parametrize("thunk, arg", BAD_ARGUMENTS)
def test_bad_argument_types_raise_a_one_line_value_error_naming_the_argument(thunk, arg):
    with pytest.raises(ValueError) as err:
        thunk()
    assert str(err.value).startswith(f"{arg}: got ") and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("q", [0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5)])
def test_hyper_parameters_accept_python_numpy_and_0_dim_tensor_numbers(q):
    torch.testing.assert_close(L.gce(Z, Y, q=q), L.gce(Z, Y, q=0.5))
    assert L.forget_rate(np.int64(5), q) == L.forget_rate(5, 0.5) == 0.25
    assert L.loss_config("gce", np.int64(10), "cifar10", q=q) == {"q": 0.5}


# ----------------------------------------------- defaults table, constructor --
DEFAULTS_TABLE = [  # docs/design.md §4: (loss, dataset, noise, expected subset)
    ("sce", "cifar10", None, dict(alpha=0.1, beta=1.0)),
    ("sce", "cifar100", None, dict(alpha=6.0, beta=0.1)),
    ("sce", "webvision-mini", None, dict(alpha=10.0, beta=1.0)),
    ("nce_rce", "cifar10", None, dict(alpha=1.0, beta=1.0)),
    ("nce_rce", "cifar100", None, dict(alpha=10.0, beta=0.1)),
    ("nce_rce", "clothing1m", None, dict(alpha=50.0, beta=0.1)),
    ("anl_ce", "cifar10", None, dict(alpha=5.0, beta=5.0, delta=5e-5, min_prob=1e-7)),
    ("anl_ce", "cifar100", None, dict(alpha=10.0, beta=1.0, delta=5e-7)),
    ("anl_ce", "webvision-mini", None, dict(alpha=20.0, beta=1.0, delta=5e-6)),
    ("elr", "cifar10", "symmetric", dict(beta=0.7, lam=3.0)),
    ("elr", "cifar10", "asymmetric", dict(beta=0.9, lam=1.0)),
    ("elr", "mnist", None, dict(beta=0.7, lam=3.0)),
    ("elr", "cifar100", "asymmetric", dict(beta=0.9, lam=7.0)),
    ("elr", "webvision-mini", None, dict(beta=0.7, lam=3.0)),
    ("nce_agce", "cifar10", None, dict(alpha=1.0, beta=4.0, a=6.0, q=1.5)),
    ("nce_agce", "cifar100n", None, dict(alpha=10.0, beta=0.1, a=1.8, q=3.0)),
    ("gce", "cifar100", None, dict(q=0.7)),
    ("fl", "cifar10", None, dict(gamma=0.5)),
    ("nnce", "cifar10", None, dict(min_prob=1e-7)),
]


@pytest.mark.parametrize("name, dataset, noise, want", DEFAULTS_TABLE)
def test_loss_config_defaults_match_the_spec_table(name, dataset, noise, want):
    got = L.loss_config(name, 100 if "100" in dataset else 10, dataset, noise)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion-mnist", "cifar10n"])
def test_ten_class_datasets_take_the_cifar10_column(dataset):
    for name in L.DEFAULTS:
        assert L.loss_config(name, 10, dataset) == L.loss_config(name, 10, "cifar10")


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_table_lists_exactly_each_loss_keyword_arguments(name):
    params = inspect.signature(L.LOSSES[name]).parameters.values()
    keywords = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    for column in L.DEFAULTS[name].values():
        assert set(column) - {"delta"} == keywords


def test_make_loss_binds_the_table_values():
    z, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    fn = L.make_loss("anl_ce", 10, "cifar10")
    torch.testing.assert_close(fn(z, y), L.anl_ce(z, y, alpha=5.0, beta=5.0, min_prob=1e-7))
    assert "delta" not in fn.keywords


def test_make_loss_applies_overrides_and_ignores_none():
    fn = L.make_loss("sce", 100, "cifar100", alpha=2.0, beta=None, gamma=None)
    assert fn.keywords == dict(alpha=2.0, beta=0.1)


@pytest.mark.parametrize("args, kwargs, match", [
    (("nope", 10, "cifar10"), {}, "ce"),                      # lists the losses
    (("gce", 10, "cifar10"), dict(gamma=1.0), "expected one of q$"),        # lists gce's hyper-parameters
    (("gce", 10, "imagenet"), {}, "cifar100n"),               # lists the datasets
    (("gce", 1, "cifar10"), {}, "num_classes"),
    (("gce", 10, "cifar10"), dict(q=2.0), "q"),               # bad value caught at construction
    (("elr", 10, "cifar10"), {}, "elr_loss"),
])
def test_make_loss_rejects_unknown_names_with_what_exists(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.make_loss(*args, **kwargs)


def test_loss_config_returns_a_fresh_copy():
    L.loss_config("sce", 10, "cifar10")["alpha"] = 123.0
    assert L.loss_config("sce", 10, "cifar10")["alpha"] == 0.1


# -------------------------------------------------------------- L1 penalty --
@settings(max_examples=20)
@given(values=st.lists(st.floats(-100, 100), min_size=1, max_size=8))
def test_l1_penalty_is_sum_of_absolute_values(values):
    params = [torch.tensor(values[: len(values) // 2 + 1]), torch.tensor(values).reshape(1, -1)]
    want = sum(abs(v) for v in values[: len(values) // 2 + 1]) + sum(abs(v) for v in values)
    assert float(L.l1_penalty(params)) == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_l1_penalty_gradient_is_the_sign():
    w = torch.tensor([-2.0, 3.0, 0.5], requires_grad=True)
    g, = torch.autograd.grad(L.l1_penalty([w]), w)
    assert torch.equal(g, torch.tensor([-1.0, 1.0, 1.0]))


def test_l1_penalty_rejects_an_empty_iterable():
    with pytest.raises(ValueError, match="params"):
        L.l1_penalty(iter([]))


# --------------------------------------------------------------------- ELR --
@settings(max_examples=20)
@given(batch=batches, beta=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_elr_target_update_matches_its_recurrence(batch, beta, seed):
    z, y = as_tensors(batch, torch.float64)
    t = torch.rand(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    t = t / t.sum(1, keepdim=True) * 0.9
    t0 = t.clone()
    _, t_new = L.elr_loss(z, y, t, beta, 3.0)
    p_hat = torch.softmax(z, 1).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(t_new, beta * t0 + (1 - beta) * p_hat / p_hat.sum(1, keepdim=True))
    assert torch.equal(t, t0)


@settings(max_examples=20)
@given(batch=batches, beta=st.floats(0, 0.99))
def test_elr_loss_is_ce_plus_lam_log_one_minus_inner_product_with_updated_target(batch, beta):
    z, y = as_tensors(batch, torch.float64)
    t = torch.full(z.shape, 0.2, dtype=torch.float64)
    v, t_new = L.elr_loss(z, y, t, beta, 3.0)
    p = torch.softmax(z, 1).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(v, L.ce(z, y) + 3.0 * torch.log(1 - (t_new * p).sum(1)))


def test_elr_gradient_does_not_flow_through_the_target():
    """ELR's target t_new = beta t + (1 - beta) p^/sum p^ is built from p.detach(): the
    regulariser's gradient reaches z only through p in <t_new, p> (the loss value alone
    cannot show a missing detach; mutation testing found it unseen)."""
    torch.manual_seed(0)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    got = L.elr_loss(z, y, torch.zeros(4, 5, dtype=torch.float64), beta=0.0, lam=3.0)[0]
    p = torch.softmax(z, 1).clamp(L.ELR_CLAMP, 1 - L.ELR_CLAMP)
    t_new = (p / p.sum(1, keepdim=True)).detach()
    want = F.cross_entropy(z, y, reduction="none") + 3.0 * torch.log1p(-(t_new * p).sum(1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g_got, = torch.autograd.grad(got.sum(), z)
    g_want, = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10)


def test_elr_with_zero_lambda_is_ce():
    z, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 5])
    v, _ = L.elr_loss(z, y, torch.zeros(4, 6), 0.7, 0.0)
    torch.testing.assert_close(v, L.ce(z, y))


@settings(max_examples=20)
@given(batch=batches, seed=st.integers(0, 99))
def test_elr_term_gradient_pushes_p_toward_the_target(batch, seed):
    z, y = as_tensors(batch, torch.float64)
    z.requires_grad_(True)
    t = torch.rand(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    t = t / t.sum(1, keepdim=True)
    reg = L.elr_loss(z, y, t, 0.9, 1.0)[0] - L.ce(z, y)        # lam * log(1 - <t_new, p>)
    _, t_new = L.elr_loss(z, y, t, 0.9, 1.0)
    g_reg, = torch.autograd.grad(reg.sum(), z)
    inner = (t_new * torch.softmax(z, 1)).sum()
    g_inner, = torch.autograd.grad(inner, z)
    # descending the ELR term raises <t, p> (strictly, unless <t, p> is stationary)
    assert float((g_reg * g_inner).sum()) <= 1e-12
    if float(g_inner.norm()) > 1e-6:
        assert float((g_reg * g_inner).sum()) < 0


@pytest.mark.parametrize("beta, lam", [(1.0, 3.0), (-0.1, 3.0), (0.7, -1.0)])
def test_elr_rejects_bad_beta_or_lambda(beta, lam):
    with pytest.raises(ValueError):
        L.elr_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3), beta, lam)


# ------------------------------------------------------------- co-teaching --
@pytest.mark.parametrize("epoch, want", [(0, 0.0), (5, 0.2), (10, 0.4), (30, 0.4)])
def test_forget_rate_ramps_linearly_to_tau(epoch, want):
    assert L.forget_rate(epoch, 0.4) == pytest.approx(want)


def test_forget_rate_exponent_shapes_the_ramp():
    assert L.forget_rate(5, 0.4, t_k=10, c=2) == pytest.approx(0.4 * 0.25)


@settings(max_examples=20)
@given(losses=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=1, max_size=12),
       other=st.lists(st.floats(0, 5), min_size=12, max_size=12),
       rate=st.floats(0, 1))
def test_coteaching_keeps_exactly_the_smallest_peer_losses(losses, other, rate):
    loss_b = torch.tensor(losses)
    loss_a = torch.tensor(other[: len(losses)])
    # rank the float32 values the function sees (1e-201 rounds to 0.0 and ties)
    losses, other = loss_b.tolist(), loss_a.tolist()
    keep_a, keep_b = L.coteaching_select(loss_a, loss_b, rate)
    k = max(1, math.floor((1 - rate) * len(losses) + 0.5))
    # brute force: rank by (loss, index), keep the first k, report ascending
    want_a = sorted(sorted(range(len(losses)), key=lambda i: (losses[i], i))[:k])
    want_b = sorted(sorted(range(len(losses)), key=lambda i: (other[i], i))[:k])
    assert keep_a.tolist() == want_a and keep_b.tolist() == want_b
    assert keep_a.dtype == torch.int64


def test_coteaching_counts_are_rounded_half_up_and_at_least_one():
    z = torch.zeros(10)
    assert len(L.coteaching_select(z, z, 0.25)[0]) == 8      # 7.5 -> 8
    assert len(L.coteaching_select(z, z, 0.2)[0]) == 8
    assert len(L.coteaching_select(z, z, 1.0)[0]) == 1


def test_coteaching_rejects_mismatched_losses():
    with pytest.raises(ValueError, match="loss_a"):
        L.coteaching_select(torch.zeros(3), torch.zeros(4), 0.2)


# ----------------------------------------------------------------------------- ANL's L1 rule

def test_anl_losses_train_without_weight_decay_and_with_their_l1_weight():
    """ANL replaces weight decay by delta * sum |theta| (Ye et al. NeurIPS'23): wd 0, delta from the table."""
    for name in ("anl_ce", "anl_fl"):
        cfg = L.loss_config(name, 10, "cifar10")
        assert L.weight_decay(name) == 0.0
        assert L.l1_weight(name, cfg) == cfg["delta"] > 0


def test_other_losses_keep_the_default_weight_decay_and_no_l1_term():
    for name in ("ce", "gce", "sce", "nce_rce", "nce_agce"):
        cfg = L.loss_config(name, 10, "cifar10")
        assert L.weight_decay(name) == L.DEFAULT_WEIGHT_DECAY == 1e-4
        assert L.l1_weight(name, cfg) == 0.0
        assert L.l1_weight(name, dict(cfg, delta=1.0)) == 0.0   # a stray delta does not switch L1 on


def test_an_explicit_weight_decay_wins_for_every_loss():
    assert L.weight_decay("anl_ce", 3e-4) == 3e-4 and L.weight_decay("ce", 0.0) == 0.0


def test_every_dataset_name_has_a_column_of_defaults():
    """data.ALL_DATASETS is the one list of --dataset names; the defaults table covers exactly it."""
    import data
    assert sorted(L.DATASET_COLUMN) == sorted(data.ALL_DATASETS)
