"""Robust per-sample losses that DCM is combined with, ANL's L1 term, ELR and
co-teaching sample selection (docs/design.md §4: the baselines DCM is plugged into).

Every loss maps logits z: (B, C) and labels y: (B,) int64 to per-sample values
(B,), so that sample-selection methods can rank them; callers reduce. All are
computed from log_softmax / logsumexp (never log(softmax)), so float32 logits of
±1e4 give finite values and finite gradients. Bad arguments raise a one-line
ValueError that names the argument: tensors must be torch.Tensors, and
hyper-parameters numbers (int, float, numpy scalar or 0-dim tensor; not bool),
checked for type before domain and used as floats.
Sources: MAE (Ghosh et al. AAAI'17), GCE (Zhang & Sabuncu NeurIPS'18),
SCE/RCE (Wang et al. ICCV'19), FL (Lin et al. ICCV'17), NCE/NFL/APL (Ma et al.
ICML'20), AGCE/AUL/AEL (Zhou et al. ICML'21), NNCE/NNFL/ANL (Ye et al.
NeurIPS'23), ELR (Liu et al. NeurIPS'20), Co-teaching (Han et al. NeurIPS'18).

Usage:
    loss_fn = make_loss("anl_ce", num_classes=10, dataset="cifar10")
    delta = l1_weight("anl_ce", loss_config("anl_ce", 10, "cifar10"))        # 5e-5
    opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=weight_decay("anl_ce"))   # 0.0
    loss = loss_fn(logits, y).mean() + delta * l1_penalty(model.parameters())
"""
import functools
import math
import numbers
from collections.abc import Iterable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Per-dataset defaults: ONE table. Columns: "cifar10" (also every 10-class
# dataset), "cifar100", "webvision" (WebVision-mini and Clothing1M).
# Sources: docs/design.md §4 (official configs of APL, ALFs, ANL, ELR) unless marked
# [choice] (recalled or picked here, not checked against an official config).
# "delta" (anl_*) is ANL's L1 weight: the training loop adds delta * l1_penalty.
# "elr" rows may be keyed "<column>/<noise>" to depend on the noise kind.
# ---------------------------------------------------------------------------
_NNCE = dict(min_prob=1e-7)                  # ANL: p clamped to [1e-7, 1]
DEFAULTS = {
    "ce": {"cifar10": {}, "cifar100": {}, "webvision": {}},
    "mae": {"cifar10": {}, "cifar100": {}, "webvision": {}},
    # GCE paper and APL: q = 0.7 everywhere.
    "gce": {c: dict(q=0.7) for c in ("cifar10", "cifar100", "webvision")},
    "rce": {"cifar10": {}, "cifar100": {}, "webvision": {}},
    "sce": {"cifar10": dict(alpha=0.1, beta=1.0), "cifar100": dict(alpha=6.0, beta=0.1),
            "webvision": dict(alpha=10.0, beta=1.0)},
    "nce": {"cifar10": {}, "cifar100": {}, "webvision": {}},
    "nce_rce": {"cifar10": dict(alpha=1.0, beta=1.0), "cifar100": dict(alpha=10.0, beta=0.1),
                "webvision": dict(alpha=50.0, beta=0.1)},
    # APL rows for CIFAR; [choice] WebVision mirrors nce_rce's alpha.
    "nce_mae": {"cifar10": dict(alpha=1.0, beta=1.0), "cifar100": dict(alpha=10.0, beta=1.0),
                "webvision": dict(alpha=50.0, beta=1.0)},
    # APL: gamma = 0.5 for FL and NFL.
    "fl": {c: dict(gamma=0.5) for c in ("cifar10", "cifar100", "webvision")},
    "nfl": {c: dict(gamma=0.5) for c in ("cifar10", "cifar100", "webvision")},
    "nnce": {c: dict(_NNCE) for c in ("cifar10", "cifar100", "webvision")},
    "nnfl": {c: dict(gamma=0.5, **_NNCE) for c in ("cifar10", "cifar100", "webvision")},
    "anl_ce": {"cifar10": dict(alpha=5.0, beta=5.0, delta=5e-5, **_NNCE),
               "cifar100": dict(alpha=10.0, beta=1.0, delta=5e-7, **_NNCE),
               "webvision": dict(alpha=20.0, beta=1.0, delta=5e-6, **_NNCE)},
    # [choice] ANL-FL takes ANL-CE's alpha, beta, delta per column, gamma = 0.5.
    "anl_fl": {"cifar10": dict(alpha=5.0, beta=5.0, gamma=0.5, delta=5e-5, **_NNCE),
               "cifar100": dict(alpha=10.0, beta=1.0, gamma=0.5, delta=5e-7, **_NNCE),
               "webvision": dict(alpha=20.0, beta=1.0, gamma=0.5, delta=5e-6, **_NNCE)},
    # [choice] standalone AGCE takes NCE+AGCE's (a, q); AUL (a=5.5, q=3) and
    # AEL (a=3) are the ALFs loss constructors' defaults as recalled, untuned.
    "agce": {"cifar10": dict(a=6.0, q=1.5), "cifar100": dict(a=1.8, q=3.0),
             "webvision": dict(a=2.5, q=3.0)},
    "aul": {c: dict(a=5.5, q=3.0) for c in ("cifar10", "cifar100", "webvision")},
    "ael": {c: dict(a=3.0) for c in ("cifar10", "cifar100", "webvision")},
    # official configs for CIFAR (docs/design.md §4); [choice] WebVision (alpha=50, beta=0.1, a=2.5, q=3) recalled from ALFs.
    "nce_agce": {"cifar10": dict(alpha=1.0, beta=4.0, a=6.0, q=1.5),
                 "cifar100": dict(alpha=10.0, beta=0.1, a=1.8, q=3.0),
                 "webvision": dict(alpha=50.0, beta=0.1, a=2.5, q=3.0)},
    # ELR: 10-class beta, lam depend on the noise (asymmetric: 0.9, 1; else 0.7, 3).
    "elr": {"cifar10": dict(beta=0.7, lam=3.0), "cifar10/asymmetric": dict(beta=0.9, lam=1.0),
            "cifar100": dict(beta=0.9, lam=7.0), "webvision": dict(beta=0.7, lam=3.0)},
}
DATASET_COLUMN = {
    "digits": "cifar10", "mnist": "cifar10", "fashion-mnist": "cifar10",
    "cifar10": "cifar10", "cifar10n": "cifar10",
    "cifar100": "cifar100", "cifar100n": "cifar100",
    "webvision-mini": "webvision", "clothing1m": "webvision",
}
# RCE's A = ln 1e-4: log of the clamped zero entries of the one-hot label (SCE
# official code, reused by APL/ANL), so rce = -A (1 - p_y) with -A = 9.2103.
RCE_A = math.log(1e-4)
GCE_MIN_PROB = 1e-7        # GCE official code clamps p to [1e-7, 1]
ELR_CLAMP = 1e-4           # ELR official code clamps p to [1e-4, 1 - 1e-4]


# ----------------------------------------------------------------- helpers --
def _got(value):
    """'type repr' of a bad argument for an error message: one line, at most ~80 characters."""
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _tensor(name, value):
    """Raise the user-facing ValueError unless value is a torch.Tensor -> value."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: got {_got(value)}; expected a torch.Tensor")
    return value


def _is_real(value):
    """A real number that is not a bool: Python int/float, numpy scalar, 0-dim real tensor."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.dtype.is_complex or value.dtype == torch.bool)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's bool_ is no Real


def _number(name, value, ok=lambda v: True, domain=None):
    """A hyper-parameter: its type first (_is_real), then its domain ok(float) -> float.

    Raises the user-facing one-line ValueError naming `name` for either; domain
    is the text of ok ("0 < q <= 1")."""
    if not _is_real(value):
        raise ValueError(f"{name}: got {_got(value)}; expected a number (int, float, numpy scalar "
                         f"or 0-dim tensor; not bool){'' if domain is None else ' with ' + domain}")
    v = float(value)
    if not ok(v):
        raise ValueError(f"{name}: got {v!r}; expected {domain}")
    return v


def _integer(name, value, ok, expected):
    """An integer argument (int or numpy integer, not bool) satisfying ok -> int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not ok(value):
        raise ValueError(f"{name}: got {_got(value)}; expected {expected}")
    return int(value)


def _check_logits(logits):
    """logits: (B, C) float tensor with C >= 2, else the user-facing ValueError."""
    if _tensor("logits", logits).dim() != 2 or not logits.is_floating_point() or logits.shape[1] < 2:
        raise ValueError(f"logits: got shape {tuple(logits.shape)} dtype {logits.dtype}; "
                         f"expected a float tensor (B, C) with C >= 2")


def _log_probs(logits, target):
    """Validate; logits: (B, C) float, target: (B,) int64 -> (log p (B, C), log p_y (B,))."""
    _check_logits(logits)
    if _tensor("target", target).shape != logits.shape[:1] or target.dtype != torch.int64:
        raise ValueError(f"target: got shape {tuple(target.shape)} dtype {target.dtype}; "
                         f"expected int64 of shape ({logits.shape[0]},)")
    # On CPU numpy reads the labels (no device to wait for); on a GPU a label outside [0, C) is the
    # device's index error below, since reading the labels here would be a host sync every step.
    y = target.numpy() if target.device.type == "cpu" and target.numel() else None
    if y is not None and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"target: got labels outside [0, {logits.shape[1]}); "
                         f"expected class indices")
    logp = F.log_softmax(logits, dim=1)
    return logp, logp.gather(1, target[:, None])[:, 0]


def log1m_softmax(logits):
    """log(1 - p_k) for every class, accurate and with finite gradients even at p_k = 1.

    logits: (B, C), C >= 2 -> (B, C). Classes other than the argmax have p_k <= 1/2,
    where log1p(-p_k) is accurate; for the argmax m, 1 - p_m = sum_{j != m} p_j is
    taken in log space (logsumexp without m), which never rounds to log 0.
    """
    _check_logits(logits)
    logp = F.log_softmax(logits, dim=1)
    m = logits.argmax(dim=1, keepdim=True)
    # clamp keeps the unused argmax entry (p may be 1) away from log1p(-1) = -inf
    rest = torch.log1p(-logp.exp().clamp(max=0.5))
    without_m = logits.scatter(1, m, float("-inf"))
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    top = torch.logsumexp(without_m, dim=1, keepdim=True) - lse
    return rest.scatter(1, m, top)


# ------------------------------------------------------------ active losses --
def ce(logits, target):
    """Cross entropy, ce = -log p_y.  logits: (B, C), target: (B,) -> (B,)."""
    return -_log_probs(logits, target)[1]


def nce(logits, target):
    """Normalised CE (APL, Ma et al. ICML'20, normalised losses): nce = log p_y / sum_k log p_k.

    logits: (B, C), target: (B,) -> (B,) in [0, 1]; sum_y nce(z, y) = 1. The
    denominator -sum_k log p_k >= C log C > 0, large but finite at logits of 1e4.
    """
    logp, logp_y = _log_probs(logits, target)
    return logp_y / logp.sum(dim=1)


def fl(logits, target, *, gamma):
    """Focal loss (Lin et al. ICCV'17): fl = -(1 - p_y)^gamma log p_y, gamma >= 0.

    logits: (B, C), target: (B,) -> (B,). [choice, docs/design.md §4] Gradients
    flow through (1 - p_y)^gamma, as in Lin et al.'s definition; APL's official
    FocalLoss (its FL baseline) takes p_t from .data, i.e. detaches the factor
    (nfl does follow APL: NFL is APL's own loss). Written exp(gamma * log(1 - p_y))
    with the stable log1m_softmax, so gamma < 1 has no 0 * inf at p_y = 1.
    gamma = 0 gives ce.
    """
    gamma = _number("gamma", gamma, lambda v: v >= 0, "gamma >= 0")
    _, logp_y = _log_probs(logits, target)
    log1m_y = log1m_softmax(logits).gather(1, target[:, None])[:, 0]
    return -torch.exp(gamma * log1m_y) * logp_y


def nfl(logits, target, *, gamma):
    """Normalised focal loss (APL): nfl = fl_y / sum_k fl_k, fl_k = -(1 - p_k)^gamma log p_k.

    logits: (B, C), target: (B,) -> (B,) in [0, 1]. As in APL's official code the
    (1 - p_k)^gamma factors are detached (numerator and normaliser): gradients flow
    through the log p terms only. gamma = 0 gives nce.
    """
    gamma = _number("gamma", gamma, lambda v: v >= 0, "gamma >= 0")
    logp, _ = _log_probs(logits, target)
    fl_k = -torch.exp(gamma * log1m_softmax(logits)).detach() * logp
    return fl_k.gather(1, target[:, None])[:, 0] / fl_k.sum(dim=1)


# ----------------------------------------------------------- passive losses --
def mae(logits, target):
    """Mean absolute error as in APL/ANL code, mae = 1 - p_y (half of ||p - e_y||_1).

    logits: (B, C), target: (B,) -> (B,) in [0, 1]; sum_y mae(z, y) = C - 1.
    """
    return 1.0 - _log_probs(logits, target)[1].exp()


def rce(logits, target):
    """Reverse CE (SCE, Wang et al. ICCV'19): rce = -sum_k p_k log clamp(e_y, 1e-4, 1)
    = -A (1 - p_y) with A = ln 1e-4 (official constant).

    logits: (B, C), target: (B,) -> (B,); sum_y rce(z, y) = -A (C - 1).
    """
    return -RCE_A * mae(logits, target)


def gce(logits, target, *, q):
    """Generalised CE (Zhang & Sabuncu NeurIPS'18, L_q loss): gce = (1 - p_y^q) / q, 0 < q <= 1,
    p clamped to [1e-7, 1] (official). q = 1 is mae; q -> 0 tends to ce.

    logits: (B, C), target: (B,) -> (B,).
    """
    q = _number("q", q, lambda v: 0 < v <= 1, "0 < q <= 1")
    logp_y = _log_probs(logits, target)[1].clamp(min=math.log(GCE_MIN_PROB))
    # -expm1(q log p) = 1 - p^q without cancellation for small q
    return -torch.expm1(q * logp_y) / q


def nnce(logits, target, *, min_prob):
    """Normalised negative CE (ANL, Ye et al. NeurIPS'23, NNLF built from CE).

    p~ = clamp(p, min_prob, 1), A = -ln min_prob, q_k = A + ln p~_k >= 0 (the
    vertically flipped CE), nnce = 1 - q_y / sum_k q_k.
    logits: (B, C), target: (B,) -> (B,) in [0, 1].
    """
    min_prob = _number("min_prob", min_prob, lambda v: 0 < v < 1, "0 < min_prob < 1")
    logp, _ = _log_probs(logits, target)
    q_k = -math.log(min_prob) + logp.clamp(min=math.log(min_prob))
    return 1.0 - q_k.gather(1, target[:, None])[:, 0] / q_k.sum(dim=1)


def nnfl(logits, target, *, gamma, min_prob):
    """Normalised negative focal loss (ANL-FL), nnce with the focal term in place of CE.

    p~ = clamp(p, min_prob, 1); the focal term -(1 - p~)^gamma ln p~ decreases in p~,
    so its maximum is A = -(1 - min_prob)^gamma ln min_prob, and the flipped terms
    q_k = A + (1 - p~_k)^gamma ln p~_k lie in [0, A] (q_k = 0 where p_k <= min_prob).
    nnfl = 1 - q_y / sum_k q_k. [choice] Gradients flow through (1 - p~)^gamma
    (unlike nfl's detached factors). gamma = 0 gives nnce.
    logits: (B, C), target: (B,) -> (B,) in [0, 1].
    """
    gamma = _number("gamma", gamma, lambda v: v >= 0, "gamma >= 0")
    min_prob = _number("min_prob", min_prob, lambda v: 0 < v < 1, "0 < min_prob < 1")
    logp, _ = _log_probs(logits, target)
    log_min = math.log(min_prob)
    big_a = -((1.0 - min_prob) ** gamma) * log_min
    q_k = big_a + torch.exp(gamma * log1m_softmax(logits)) * logp
    # clamped entries are exactly 0 with no gradient; clamp(0) absorbs float32 rounding near A
    q_k = torch.where(logp > log_min, q_k, torch.zeros_like(q_k)).clamp(min=0.0)
    return 1.0 - q_k.gather(1, target[:, None])[:, 0] / q_k.sum(dim=1)


def agce(logits, target, *, a, q):
    """Asymmetric GCE (ALFs, Zhou et al. ICML'21): agce = ((a + 1)^q - (a + p_y)^q) / q, a, q > 0.

    logits: (B, C), target: (B,) -> (B,).
    """
    a = _number("a", a, lambda v: v > 0, "a > 0")
    q = _number("q", q, lambda v: v > 0, "q > 0")
    p_y = _log_probs(logits, target)[1].exp()
    return ((a + 1.0) ** q - (a + p_y) ** q) / q


def aul(logits, target, *, a, q):
    """Asymmetric unhinged loss (ALFs): aul = ((a - p_y)^q - (a - 1)^q) / q, a > 1, q > 0.

    logits: (B, C), target: (B,) -> (B,).
    """
    a = _number("a", a, lambda v: v > 1, "a > 1")
    q = _number("q", q, lambda v: v > 0, "q > 0")
    p_y = _log_probs(logits, target)[1].exp()
    return ((a - p_y) ** q - (a - 1.0) ** q) / q


def ael(logits, target, *, a):
    """Asymmetric exponential loss (ALFs): ael = exp(-p_y / a), a > 0.

    logits: (B, C), target: (B,) -> (B,).
    """
    a = _number("a", a, lambda v: v > 0, "a > 0")
    return torch.exp(-_log_probs(logits, target)[1].exp() / a)


# ------------------------------------------------------ active + passive mixes --
def _weights(alpha, beta):
    """The mixing weights of an active + passive loss, checked numbers -> (alpha, beta) floats."""
    return _number("alpha", alpha), _number("beta", beta)


def sce(logits, target, *, alpha, beta):
    """Symmetric CE (Wang et al. ICCV'19): alpha * ce + beta * rce.  (B, C), (B,) -> (B,)."""
    alpha, beta = _weights(alpha, beta)
    return alpha * ce(logits, target) + beta * rce(logits, target)


def nce_rce(logits, target, *, alpha, beta):
    """APL NCE+RCE (Ma et al. ICML'20): alpha * nce + beta * rce.  (B, C), (B,) -> (B,)."""
    alpha, beta = _weights(alpha, beta)
    return alpha * nce(logits, target) + beta * rce(logits, target)


def nce_mae(logits, target, *, alpha, beta):
    """APL NCE+MAE: alpha * nce + beta * mae.  (B, C), (B,) -> (B,)."""
    alpha, beta = _weights(alpha, beta)
    return alpha * nce(logits, target) + beta * mae(logits, target)


def nce_agce(logits, target, *, alpha, beta, a, q):
    """ALFs NCE+AGCE (Zhou et al. ICML'21): alpha * nce + beta * agce.  (B, C), (B,) -> (B,)."""
    alpha, beta = _weights(alpha, beta)
    return alpha * nce(logits, target) + beta * agce(logits, target, a=a, q=q)


def anl_ce(logits, target, *, alpha, beta, min_prob):
    """ANL-CE (Ye et al. NeurIPS'23) without its L1 term: alpha * nce + beta * nnce.

    The full objective adds delta * l1_penalty(all model parameters) to the batch
    mean, with the optimizer's weight decay set to 0 (ANL official setup).
    logits: (B, C), target: (B,) -> (B,).
    """
    alpha, beta = _weights(alpha, beta)
    return alpha * nce(logits, target) + beta * nnce(logits, target, min_prob=min_prob)


def anl_fl(logits, target, *, alpha, beta, gamma, min_prob):
    """ANL-FL without its L1 term: alpha * nfl + beta * nnfl (L1 and weight decay as anl_ce).

    logits: (B, C), target: (B,) -> (B,).
    """
    alpha, beta = _weights(alpha, beta)
    return (alpha * nfl(logits, target, gamma=gamma)
            + beta * nnfl(logits, target, gamma=gamma, min_prob=min_prob))


def l1_penalty(params):
    """ANL's regulariser sum |theta| over ALL parameters: params iterable of tensors -> scalar.

    The training loop adds delta * l1_penalty(model.parameters()) to the mean loss
    and sets the optimizer's weight decay to 0 (ANL replaces L2 by this L1 term).
    """
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise ValueError(f"params: got {type(params).__name__}; expected an iterable of tensors "
                         f"(e.g. model.parameters())")
    total = None
    for p in params:
        _tensor("params", p)
        total = p.abs().sum() if total is None else total + p.abs().sum()
    if total is None:
        raise ValueError("params: got an empty iterable; expected at least one tensor")
    return total


DEFAULT_WEIGHT_DECAY = 1e-4   # the APL/ANL CIFAR-10 protocol's SGD weight decay (docs/design.md, Protocols)
L1_LOSSES = ("anl_ce", "anl_fl")   # ANL: delta * sum |theta| replaces weight decay


def weight_decay(name, requested=None):
    """The optimizer's weight decay for loss `name`: `requested` when given (not None), else 0
    for the ANL losses (Ye et al. NeurIPS'23 train with weight decay 0 and their L1 term
    instead) and DEFAULT_WEIGHT_DECAY otherwise."""
    if requested is not None:
        return _number("requested", requested, lambda v: v >= 0, "weight decay >= 0")
    return 0.0 if name in L1_LOSSES else DEFAULT_WEIGHT_DECAY


def l1_weight(name, config):
    """delta of the L1 term delta * l1_penalty(params) the training loop adds for loss `name`:
    config["delta"] (loss_config's) for the ANL losses, 0 for every other loss."""
    if not isinstance(config, dict):
        raise ValueError(f"config: got {type(config).__name__}; expected loss_config's dict")
    if name not in L1_LOSSES:
        return 0.0
    return _number("delta", config.get("delta", 0.0), lambda v: v >= 0, "delta >= 0")


LOSSES = {f.__name__: f for f in (
    ce, mae, gce, rce, sce, nce, nce_rce, nce_mae, fl, nfl, nnce, nnfl,
    anl_ce, anl_fl, agce, aul, ael, nce_agce)}


# ------------------------------------------------------------- constructor --
def loss_config(name, num_classes, dataset, noise=None, **overrides):
    """Hyper-parameters of loss `name` on `dataset` from DEFAULTS, updated by overrides.

    Returns a new dict (anl_* include "delta"; "elr" gives beta, lam, and on the
    10-class datasets noise == "asymmetric" selects 0.9, 1, anything else 0.7, 3).
    Overrides whose value is None are ignored, so unset CLI flags fall through;
    the others must be numbers (_is_real) and are stored as floats.
    num_classes is validated (>= 2); the column is chosen by dataset.
    """
    if not isinstance(name, str) or name not in DEFAULTS:
        raise ValueError(f"name: got {name!r}; expected one of {sorted(DEFAULTS)}")
    if not isinstance(dataset, str) or dataset not in DATASET_COLUMN:
        raise ValueError(f"dataset: got {dataset!r}; expected one of {sorted(DATASET_COLUMN)}")
    _integer("num_classes", num_classes, lambda v: v >= 2, "an int >= 2")
    column = DATASET_COLUMN[dataset]
    rows = DEFAULTS[name]
    hp = dict(rows.get(f"{column}/{noise}", rows[column]))
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in hp:
            known = f"expected one of {', '.join(sorted(hp))}" if hp else f"{name!r} has none"
            raise ValueError(f"{key}: not a hyper-parameter of {name!r}; {known}")
        hp[key] = _number(key, value)
    return hp


def make_loss(name, num_classes, dataset, noise=None, **overrides):
    """Per-sample loss callable(logits (B, C), target (B,)) -> (B,) with its defaults bound.

    A functools.partial of LOSSES[name] with loss_config's hyper-parameters minus
    "delta" (the training loop adds delta * l1_penalty). Hyper-parameter values are
    checked now, delta by l1_weight and the others by one call on a (1, num_classes) zero batch.
    'elr' raises ValueError: it carries per-sample state, so use elr_loss with
    loss_config('elr', ...) instead (returning plain ce would silently drop ELR).
    """
    if name == "elr":
        raise ValueError("name: got 'elr', which needs per-sample state; "
                         "expected a stateless loss; call elr_loss with loss_config('elr', ...)")
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"name: got {name!r}; expected one of {sorted(LOSSES)}")
    hp = loss_config(name, num_classes, dataset, noise, **overrides)
    l1_weight(name, hp)   # checks delta (>= 0) now, not at the first step
    hp.pop("delta", None)
    fn = functools.partial(LOSSES[name], **hp)
    fn(torch.zeros(1, num_classes), torch.zeros(1, dtype=torch.int64))
    return fn


# --------------------------------------------------------------------- ELR --
def elr_loss(logits, target, t_batch, beta, lam):
    """Early-learning regularisation (Liu et al. NeurIPS'20, ELR loss), per sample.

    p^ = clamp(p.detach(), 1e-4, 1 - 1e-4); t_new = beta t + (1 - beta) p^ / sum p^;
    loss = ce + lam * log(1 - <t_new, clamp(p, 1e-4, 1 - 1e-4)>).
    As in the official code the target is updated first and the regulariser uses
    the UPDATED t_new, with the clamped (non-detached) p; the clamp keeps
    <t, p> <= 1 - 1e-4, so the log is finite. The caller owns the memory (N, C),
    initialised to 0, and writes t_new back at the batch's sample ids.
    logits: (B, C), target: (B,), t_batch: (B, C) rows >= 0 summing to <= 1
    -> (loss (B,), t_new (B, C) detached); t_batch is not modified.
    """
    beta = _number("beta", beta, lambda v: 0 <= v < 1, "0 <= beta < 1")
    lam = _number("lam", lam, lambda v: v >= 0, "lam >= 0")
    logp, logp_y = _log_probs(logits, target)
    if _tensor("t_batch", t_batch).shape != logits.shape:
        raise ValueError(f"t_batch: got shape {tuple(t_batch.shape)}; "
                         f"expected the logits' shape {tuple(logits.shape)}")
    p = logp.exp().clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
    p_hat = p.detach()
    t_new = beta * t_batch.detach() + (1.0 - beta) * p_hat / p_hat.sum(dim=1, keepdim=True)
    reg = torch.log1p(-(t_new * p).sum(dim=1))
    return -logp_y + lam * reg, t_new


# ------------------------------------------------------------- co-teaching --
def forget_rate(epoch, tau, t_k=10, c=1):
    """Co-teaching schedule (Han et al. NeurIPS'18 Alg. 1): tau * min(1, epoch / t_k)^c.

    epoch >= 0 as counted by the caller (0 keeps every sample), tau in [0, 1]
    (default: the noise rate), t_k > 0, c > 0 -> float. Note the official code
    ramps with linspace(0, tau^c, t_k) instead; this is the paper's formula (docs/design.md §4).
    """
    epoch = _number("epoch", epoch, lambda v: v >= 0, "epoch >= 0")
    tau = _number("tau", tau, lambda v: 0 <= v <= 1, "0 <= tau <= 1")
    t_k = _number("t_k", t_k, lambda v: v > 0, "t_k > 0")
    c = _number("c", c, lambda v: v > 0, "c > 0")
    return tau * min(1.0, epoch / t_k) ** c


def num_kept(batch_size, forget_rate):
    """round((1 - forget_rate) * batch_size), half up, at least 1 -> int."""
    batch_size = _integer("batch_size", batch_size, lambda v: v >= 1, "an int >= 1")
    forget_rate = _number("forget_rate", forget_rate, lambda v: 0 <= v <= 1, "0 <= forget_rate <= 1")
    return max(1, int(math.floor((1.0 - forget_rate) * batch_size + 0.5)))


def _smallest(loss, k):
    """Indices of the k smallest entries of loss: (B,) -> (k,) int64 ascending.
    Stable sort: ties go to the lower index; NaN counts as the largest loss."""
    order = torch.sort(loss.detach(), stable=True).indices[:k]
    return order.sort().values


def coteaching_select(loss_a, loss_b, forget_rate):
    """Co-teaching cross update (Han et al. NeurIPS'18 Alg. 1).

    loss_a, loss_b: (B,) per-sample losses of networks A and B -> (keep_for_a,
    keep_for_b), each an int64 index tensor (k,) sorted ascending, with
    k = max(1, round((1 - forget_rate) B)) (half up; the official code floors).
    A is updated on the k samples with the smallest loss_b, B on those with the
    smallest loss_a; ties go to the lower index (stable sort), so it is deterministic.
    """
    _tensor("loss_a", loss_a), _tensor("loss_b", loss_b)
    if loss_a.dim() != 1 or loss_a.shape != loss_b.shape or loss_a.numel() == 0:
        raise ValueError(f"loss_a, loss_b: got shapes {tuple(loss_a.shape)}, "
                         f"{tuple(loss_b.shape)}; expected two non-empty (B,) tensors")
    k = num_kept(loss_a.numel(), forget_rate)
    return _smallest(loss_b, k), _smallest(loss_a, k)
