"""Dynamic Connection Masking (DCM) on a fully connected head (the "DFC" of
Zhang et al., "Combating Noisy Labels via Dynamic Connection Masking",
arXiv 2508.09697): edge activations (Fig. 2), edge importance (Eq. 2), top-k
mask selection and the masked linear head as written first; then their tuned
fast paths (each proven equal to its definition by a named test); then the mask
schedule as a pure state transition, moment helpers for multi-process runs,
`--dcm-freeze`, and the mask change of Fig. 5 (Fig. 3's gradient error: diagnostics.py).
Conventions and their sources: docs/design.md §2.

Usage, the method in three lines (one training step):

    S = edge_scores(v.detach(), w)             # (C, d) = |W| · std_b v   (Eq. 2)
    M = topk_mask(S, keep=0.1)                 # each class keeps max(1, round(0.1·d)) inputs
    logits = masked_linear(v, w, b, M)         # z = v (W⊙M)ᵀ + b; at test time mask=None (full head)

and as train.py runs it, with the schedule (interval, warm-up) as a pure state transition:

    state = mask_init(w.shape, device=w.device)                         # all ones
    state = mask_schedule_step(state, moments(v), lambda m: scores_from_moments(m, w), keep=0.1)
    logits = masked_linear(v, w, b, state.mask)

Conventions (the paper's Eq. 2 with j = class, k = input feature): features v: (B, d), head
weights w: (C, d), bias b: (C,), mask M: (C, d) with values 0/1; scores use the unmasked w.
Scores are population statistics over the batch (correction=0): the mask does not depend on
it (it scales every score alike), except that a batch of one gives scores 0, never NaN.
"""
import math
import numbers
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import topk_cpu

Tensor = torch.Tensor
Moments = Tuple[Tensor, ...]   # mergeable sums, e.g. (n, Σv, Σv²); merged by elementwise sum
SCOPES = ("row", "global")
STATS = ("batch", "interval")


# ----------------------------------------------------------------------------- Fig. 2 and Eq. 2

def edge_activations(v: Tensor, w: Tensor) -> Tensor:
    """Edge activations of Fig. 2: the terms of the inner products before the sum.

    A[b, j, k] = v[b, k] · w[j, k];  v: (B, d), w: (C, d) -> A: (B, C, d).
    Summing A over k gives the logits without bias. Memory is B·C·d: for reading
    and tests, never for training.
    """
    _check_features_weights(v, w)
    return v[:, None, :] * w[None, :, :]


def edge_scores_literal(v: Tensor, w: Tensor) -> Tensor:
    """Edge importance, Eq. 2 as written: S[j, k] = std_b A[b, j, k].

    Population std (correction=0), so B = 1 gives 0, not NaN.
    v: (B, d), w: (C, d) -> S: (C, d). Materialises the (B, C, d) tensor A.
    """
    _check_features_weights(v, w)
    _check_batch(v)
    _check_floating(v=v, w=w)
    return edge_activations(v, w).std(dim=0, correction=0)


# ----------------------------------------------------------------------------- selection and the masked head

def kept_count(keep: float, n: int) -> int:
    """Number of entries kept out of n: max(1, round(keep·n)) (Python round, half to even)."""
    _check_keep(keep)
    return max(1, round(keep * n))


def _selection_rows(scores: Tensor, keep: float, scope: str) -> Tuple[Tensor, int]:
    """Validate, and view scores (C, d) as the rows selection works on: (C, d) for
    scope "row", (1, C·d) for "global"; returns (rows, k kept per row)."""
    _check_2d("scores", scores, "(C, d)")
    _check_keep(keep)
    _check_scope(scope)
    flat = scores if scope == "row" else scores.reshape(1, -1)
    return flat, kept_count(keep, flat.shape[1])


def topk_mask_literal(scores: Tensor, keep: float, scope: str = "row") -> Tensor:
    """Keep the most important edges, mask the rest: the selection as written, by a full
    stable descending sort (O(n log n) per row; docs/design.md §2 for scope, k and ties).

    scores: (C, d) -> M: (C, d) in scores.dtype, values 0/1. scope "row": every class j
    keeps exactly k = max(1, round(keep·d)) inputs; scope "global": exactly
    max(1, round(keep·C·d)) edges over the whole matrix; keep = 1 is plain FC.
    torch.sort keeps equal scores in index order and puts NaN first, so the first k
    sorted indices are the mask: ties go to the lower (flat) index.
    """
    flat, k = _selection_rows(scores, keep, scope)
    if k >= flat.shape[1]:   # keep = 1, or nothing to select from (an empty row: k = 1 > 0)
        return torch.ones_like(scores)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(flat).scatter_(1, order[:, :k], 1)
    return mask.reshape(scores.shape)


def masked_linear(v: Tensor, w: Tensor, b: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
    """Masked head: z = v (W⊙M)ᵀ + b (Fig. 2 with the mask M applied).

    v: (B, d), w: (C, d), b: (C,) or None, mask: (C, d) or None (plain linear)
    -> z: (B, C). Masked edges get exactly zero gradient (∂z/∂W = vᵀ·g, times
    M = 0), and ∂L/∂v = g (W⊙M): no gradient reaches the backbone through a
    masked edge. With an all-ones mask, w·1 == w exactly, so z equals
    F.linear(v, w, b) bit for bit.
    """
    _check_features_weights(v, w)
    if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (w.shape[0],)):
        got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise ValueError(f"b: expected a tensor of shape ({w.shape[0]},) or None, got {got}")
    if mask is None:
        return F.linear(v, w, b)
    _check_mask(mask, w)
    return F.linear(v, w * mask.to(w.dtype), b)   # cast: a bool or float32 mask must not promote w


# ----------------------------------------------------------------------------- fast paths
# Tuned versions of the definitions above, each proven equal to its definition by the test
# its docstring names. Training selects with topk_mask and scores with scores_from_moments
# (the moments section below), the mergeable form of edge_scores.

def edge_scores(v: Tensor, w: Tensor) -> Tensor:
    """Edge importance, exact fast form of Eq. 2: S[j, k] = |w[j, k]| · std_b v[b, k];
    proven equal to edge_scores_literal by tests/test_dcm_ref.py::test_literal_scores_equal_fast_scores.

    Exact because w is constant over the batch: std_b(v_bk · w_jk) = |w_jk| std_b v_bk.
    Cost O((B + C)·d), no (B, C, d) tensor. The std is taken in float64 (cheap,
    B·d) so large feature magnitudes lose nothing; the result has the promoted
    dtype of v and w, like the literal form.
    v: (B, d), w: (C, d) -> S: (C, d).
    """
    _check_features_weights(v, w)
    _check_batch(v)
    _check_floating(v=v, w=w)
    std_v = v.to(torch.float64).std(dim=0, correction=0)          # (d,)
    out_dtype = torch.promote_types(v.dtype, w.dtype)
    return (w.to(torch.float64).abs() * std_v).to(out_dtype)


def topk_mask(scores: Tensor, keep: float, scope: str = "row") -> Tensor:
    """Fast path of topk_mask_literal: the same mask bit for bit, proven by
    tests/test_dcm_ref.py::test_topk_mask_equals_the_stable_sort_definition_on_random_scores
    (and ..._under_heavy_ties_and_nan, ..._near_ties_signs_and_long_rows).

    scores: (C, d) -> M: (C, d), same dtype and device, values 0/1.
    How (docs/design.md §9): eager on CPU, topk_cpu's partition on the score bits where it
    provably is the sort's mask, else torch.topk plus the exact tie fill (_first_k_by_rank);
    on a GPU and inside torch.compile always the tie fill: no host read, no numpy.
    """
    flat, k = _selection_rows(scores, keep, scope)
    if k >= flat.shape[1] or flat.shape[0] == 0:   # keep = 1, or an empty matrix
        return torch.ones_like(scores)
    flat = flat.to(torch.uint8) if flat.dtype == torch.bool else flat   # topk has no bool kernel
    if flat.device.type != "cpu" or torch.compiler.is_compiling():
        top = torch.topk(flat, k, dim=1, sorted=False).values          # (R, k), NaN counts as largest
        return _first_k_by_rank(flat, top, k, host_checks=False).to(scores.dtype).reshape(scores.shape)
    mask = topk_cpu.mask_by_bits(flat.detach(), k, scores.dtype)
    if mask is None:
        mask = _first_k_by_rank(flat, torch.topk(flat, k, dim=1, sorted=False).values, k).to(scores.dtype)
    return mask.reshape(scores.shape)


def _kth_largest(top: Tensor) -> Tensor:
    """k-th largest per row of the top-k values top: (R, k) -> (R, 1), NaN ranked largest.

    That is the smallest non-NaN value, or NaN when all k are NaN.
    """
    if not top.is_floating_point():
        return top.amin(dim=1, keepdim=True)
    nan = top.isnan()
    t = top.masked_fill(nan, math.inf).amin(dim=1, keepdim=True)
    return t.masked_fill(nan.all(dim=1, keepdim=True), math.nan)


def _first_k_by_rank(flat: Tensor, top: Tensor, k: int, host_checks: bool = True) -> Tensor:
    """The first k entries of each row in stable descending order, as a bool mask.

    flat: (R, n) scores, top: (R, k) their k largest (any order) -> (R, n) bool.
    Every entry ranked strictly above the k-th largest t is kept; the entries
    tied with t fill the remaining slots in index order (cumsum), which is what
    a stable sort does. NaN ranks above numbers and ties with NaN.
    host_checks=False skips the NaN shortcut (a host read) and always applies
    the NaN rule, which is then a no-op when there is no NaN.
    """
    t = _kth_largest(top)
    above, tied = flat > t, flat == t
    if flat.is_floating_point() and (not host_checks or bool(top.isnan().any())):   # no NaN in the top k: none anywhere
        t_nan, x_nan = t.isnan(), flat.isnan()
        above |= x_nan & ~t_nan
        tied |= x_nan & t_nan
    room = k - above.sum(dim=1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= room))


# ----------------------------------------------------------------------------- moments (multi-process)

def moments(v: Tensor) -> Moments:
    """Mergeable batch moments of the features, from v.detach(), all float64.

    v: (B, d) -> (n: 0-dim, s1 = Σ_b v: (d,), s2 = Σ_b v²: (d,)).
    Multi-process runs all-reduce (sum) these; every rank then computes the
    same scores and therefore the same mask.
    """
    _check_2d("v", v, "(B, d)")
    vd = v.detach().to(torch.float64, copy=True)   # our own buffer: squared in place below
    n = torch.full((), float(vd.shape[0]), dtype=torch.float64, device=vd.device)   # a fill, no host copy
    s1 = vd.sum(dim=0)
    return (n, s1, vd.square_().sum(dim=0))        # float32² is exact in float64


def merge_moments(a: Optional[Moments], b: Optional[Moments]) -> Optional[Moments]:
    """Pool two moment tuples by elementwise sum; None is the empty pool.

    Works for any tuple of tensors: kan.py pools (n, ΣΦ, ΣΦΦᵀ) with it.
    merge_moments(None, m) == m, so pooling can start from None.
    """
    if a is None:
        return b
    if b is None:
        return a
    if len(a) != len(b):
        raise ValueError(f"b: expected a moment tuple of length {len(a)}, got length {len(b)}")
    return tuple(x + y for x, y in zip(a, b))


def std_from_moments(m: Moments) -> Tensor:
    """Population std per feature from (n, Σv, Σv²): (d,), float64.

    var = Σv²/n − (Σv/n)², clamped at 0 (rounding can make it slightly negative).
    Done in float64; the relative error of the std grows like eps64·(mean/std)²: below
    1e-9 for |mean| < 100·std (features after a ReLU/BN backbone), 2e-6 at |mean| = 1e5·std,
    1e-3 at 3e6·std, where a two-pass std is better (the price of plain sums, which
    all-reduce needs). An empty pool (n = 0) gives std 0.
    """
    if len(m) != 3:
        raise ValueError(f"m: expected moments (n, s1, s2), got a tuple of length {len(m)}")
    n, s1, s2 = (t if t.dtype == torch.float64 else t.to(torch.float64) for t in m)
    n = n.clamp(min=1.0)
    mean = s1 / n
    return (s2 / n).sub_(mean * mean).clamp_(min=0.0).sqrt_()   # in place on our temporaries: fewer ops


_SCORE_BLOCK = 1 << 17   # entries of w per float64 block in scores_from_moments on CPU (1 MiB)


def scores_from_moments(m: Moments, w: Tensor) -> Tensor:
    """Edge scores of Eq. 2 from pooled moments: |w| · std: what training scores with.
    m: moments of (d,), w: (C, d) -> (C, d) in w.dtype (edge_scores returns the promoted dtype).

    Equals edge_scores on the concatenation of the pooled batches (float tolerance), proven by
    tests/test_dcm_ref.py::test_scores_from_pooled_moments_equal_scores_on_concatenated_batches.
    """
    _check_2d("w", w, "(C, d)")
    std_v = std_from_moments(m)
    if std_v.shape != (w.shape[1],):
        raise ValueError(f"m: expected moments over {w.shape[1]} features (w is "
                         f"{tuple(w.shape)}), got std of shape {tuple(std_v.shape)}")
    # A float64 copy of w, updated in place: the same float64 products, rounded once to
    # w.dtype, as (|w|.double() * std).to(w.dtype), without two more (C, d) temporaries.
    # On CPU in row blocks of _SCORE_BLOCK entries, which stay in cache (2x faster at C·d = 2M).
    C, d = w.shape
    rows = max(1, _SCORE_BLOCK // max(d, 1)) if w.device.type == "cpu" else C
    if rows >= C:
        return w.detach().to(torch.float64, copy=True).abs_().mul_(std_v).to(w.dtype)
    out = torch.empty(w.shape, dtype=w.dtype, device=w.device)
    for i in range(0, C, rows):
        out[i:i + rows] = w[i:i + rows].detach().to(torch.float64, copy=True).abs_().mul_(std_v)
    return out


# ----------------------------------------------------------------------------- schedule

class MaskState(NamedTuple):
    """State of the mask schedule; replaced, never mutated.

    mask: (C, d) 0/1; step: optimizer steps already taken; pooled: moments pooled
    since the last update (stats="interval") or None; updates: number of mask
    recomputations; change: 1 − Jaccard(kept) at the last update, a 0-dim float64
    tensor on the mask's device (0 initially), so a schedule step never waits for the
    GPU; float(state.change) reads it (a float restored from an old checkpoint works too).
    """
    mask: Tensor
    step: int
    pooled: Optional[Moments]
    updates: int
    change: Tensor


def mask_init(shape, dtype=torch.float32, device=None) -> MaskState:
    """Initial state: all-ones mask of shape (C, d) (plain FC), step 0, nothing pooled."""
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2 and \
        all(isinstance(n, numbers.Integral) and n >= 0 for n in shape)
    if not ok:
        raise ValueError(f"shape: expected (C, d), two integers >= 0, got {shape!r}")
    mask = torch.ones(tuple(shape), dtype=dtype, device=device)
    return MaskState(mask, 0, None, 0, torch.zeros((), dtype=torch.float64, device=mask.device))


def mask_due(step: int, interval: int, warmup: int) -> bool:
    """True iff the mask is recomputed at this step: step ≥ warmup and (step − warmup) % interval == 0."""
    _check_schedule(interval, warmup, STATS[0])
    return step >= warmup and (step - warmup) % interval == 0


def mask_schedule_step(state: MaskState, batch_moments: Moments,
                       score_fn: Callable[[Moments], Tensor], keep: float,
                       scope: str = "row", interval: int = 1, warmup: int = 0,
                       stats: str = "batch") -> MaskState:
    """One step of the DCM schedule (docs/design.md §2). Call once per optimizer step, before
    the head forward of that step, with the current batch's moments (already
    all-reduced in multi-process runs).

    s = state.step. Before warm-up (s < warmup) the mask is all ones. From then on
    the mask is recomputed when mask_due(s, interval, warmup), as
    topk_mask(score_fn(moments), keep, scope), where moments are the current
    batch's (stats="batch", Eq. 2) or those pooled over every batch since the
    last update, this one included (stats="interval"). score_fn: Moments -> (C, d),
    e.g. lambda m: scores_from_moments(m, w). Returns the new state with step s + 1.
    """
    _check_keep(keep)
    _check_scope(scope)
    _check_schedule(interval, warmup, stats)
    _check_moments(batch_moments)
    s = state.step
    if s < warmup:
        return state._replace(mask=torch.ones_like(state.mask), step=s + 1, pooled=None)
    pooled = merge_moments(state.pooled, batch_moments) if stats == "interval" else None
    if not mask_due(s, interval, warmup):
        return state._replace(step=s + 1, pooled=pooled)
    source = pooled if stats == "interval" else batch_moments
    scores = score_fn(source)
    if not isinstance(scores, torch.Tensor) or scores.shape != state.mask.shape:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"score_fn: expected scores of shape {tuple(state.mask.shape)}, got {got}")
    new = topk_mask(scores, keep, scope).to(state.mask.dtype)
    return MaskState(new, s + 1, None, state.updates + 1, mask_change_tensor(state.mask, new))


# ----------------------------------------------------------------------------- --dcm-freeze

def freeze_masked(w_after: Tensor, w_before: Tensor, mask: Tensor) -> Tensor:
    """`--dcm-freeze`: entries with mask == 0 from w_before, the rest from w_after.

    All three of one shape: (C, d) for an FC head; for KAN coefficients
    (C, d, G) pass the (C, d) mask expanded to (C, d, G).

    Why: a masked edge gets zero gradient, but a stock optimizer still moves it
    (weight decay, and momentum from steps when it was kept). Applied right after
    optimizer.step(), e.g.
        with torch.no_grad(): w.copy_(freeze_masked(w, w_before, mask))
    it leaves masked entries exactly unchanged by the step. Only the parameter is
    restored: the optimizer's momentum buffers still accumulate weight decay for
    masked entries and apply it once an edge is kept again.
    """
    _check_mask(w_before, w_after, "w_before", "w_after")
    _check_mask(mask, w_after, "mask", "w_after")
    return torch.where(mask != 0, w_after, w_before)


# ----------------------------------------------------------------------------- diagnostics (Fig. 5): mask change between updates, kept fraction

def mask_change_literal(m_old: Tensor, m_new: Tensor) -> float:
    """Mask change between updates (Fig. 5) as written: 1 − Jaccard(kept_old, kept_new)
    = 1 − |kept_old ∩ kept_new| / |kept_old ∪ kept_new|, 0 if both are empty.
    m_old, m_new: (C, d) masks with values 0/1 (any dtype); kept = entries != 0."""
    _check_mask(m_new, m_old, "m_new", "m_old")
    a, b = m_old != 0, m_new != 0
    union = int((a | b).sum())
    return 0.0 if union == 0 else 1.0 - int((a & b).sum()) / union


def mask_change(m_old: Tensor, m_new: Tensor) -> float:
    """Fast path of mask_change_literal (1 − Jaccard of the kept sets; 0 if both empty), proven
    equal to it by tests/test_dcm_ref.py::test_mask_change_fast_path_equals_jaccard_on_bools.
    m_old, m_new: (C, d) masks with values 0/1 (as topk_mask returns; any dtype) -> float.
    """
    return float(mask_change_tensor(m_old, m_new))


def mask_change_tensor(m_old: Tensor, m_new: Tensor) -> Tensor:
    """mask_change as a 0-dim float64 tensor on the masks' device, with no read-back to
    the host off the CPU nor numpy inside torch.compile (what the schedule stores). For 0/1 masks |A ∩ B| = Σ a·b (one dot
    product) and |A ∪ B| = Σa + Σb − |A ∩ B|: no bool temporaries; counts exact (_exact_count_view).
    """
    _check_mask(m_new, m_old, "m_new", "m_old")
    a, b = _exact_count_view(m_old), _exact_count_view(m_new)
    if a.dtype != b.dtype:                         # torch.dot wants one dtype
        a, b = a.to(torch.float64), b.to(torch.float64)
    if a.device.type != "cpu" or torch.compiler.is_compiling():   # no host read, no numpy
        return _change_on_device(a, b)
    return _change_on_host(a, b)


def _change_on_host(a: Tensor, b: Tensor) -> Tensor:
    """CPU: the same exact counts by numpy, then Python floats (float64): 1/4 of the torch ops
    of _change_on_device, which is what a mask update inside a training step pays for on CPU."""
    a, b = a.detach().numpy(), b.detach().numpy()
    inter, n_old, n_new = float(np.dot(a, b)), float(a.sum()), float(b.sum())
    union = n_old + n_new - inter
    return torch.tensor(1.0 - inter / union if union > 0 else 0.0, dtype=torch.float64)


def _change_on_device(a: Tensor, b: Tensor) -> Tensor:
    """Any device, no host read: a, b: (N,) 0/1 of one dtype -> 0-dim float64."""
    inter, n_old, n_new = torch.stack((torch.dot(a, b), a.sum(), b.sum())).to(torch.float64)
    union = n_old + n_new - inter
    return torch.where(union > 0, 1.0 - inter / union.clamp(min=1.0), torch.zeros_like(union))


def _exact_count_view(mask: Tensor) -> Tensor:
    """mask: (C, d) 0/1 -> (C·d,) float in which sums of the entries are exact integers.

    float32/float64 sums of 0/1 values are exact while every partial sum fits the
    mantissa (numel ≤ 2/eps, 2²⁴ for float32); otherwise count in float64.
    """
    flat = mask.reshape(-1)
    if flat.dtype in (torch.float32, torch.float64) and flat.numel() <= 2 / torch.finfo(flat.dtype).eps:
        return flat
    return flat.to(torch.float64)


def kept_fraction(mask: Tensor) -> float:
    """Fraction of kept edges: mean(mask != 0). mask: (C, d)."""
    if not isinstance(mask, torch.Tensor) or mask.numel() == 0:
        raise ValueError("mask: expected a non-empty tensor")
    return float((mask != 0).to(torch.float64).mean())


# ----------------------------------------------------------------------------- argument checks
# Private helpers of the public functions above (user errors are one-line ValueErrors);
# copy them along with any function you copy.

def _check_2d(name: str, t: Tensor, expected: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a 2-D tensor {expected}, got {got}")


def _check_features_weights(v: Tensor, w: Tensor) -> None:
    _check_2d("v", v, "(B, d)")
    _check_2d("w", w, "(C, d)")
    if v.shape[1] != w.shape[1]:
        raise ValueError(f"v, w: feature sizes differ, v is {tuple(v.shape)} and w is "
                         f"{tuple(w.shape)}; expected v: (B, d) and w: (C, d)")


def _check_floating(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype} (scores of integer "
                             f"tensors would be truncated; convert with {name}.float())")


def _check_batch(v: Tensor) -> None:
    if v.shape[0] < 1:
        raise ValueError(f"v: expected at least one sample, got shape {tuple(v.shape)}")


def _check_mask(mask: Tensor, w: Tensor, name: str = "mask", like: str = "w") -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{like}: expected a tensor, got {type(w).__name__}")
    if not isinstance(mask, torch.Tensor) or mask.shape != w.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected shape {tuple(w.shape)} (same as {like}), got {got}")


def _check_keep(keep: float) -> None:
    ok = isinstance(keep, numbers.Real) and not isinstance(keep, (bool, np.bool_)) and 0.0 < keep <= 1.0
    if not ok:
        hint = " (a Python number: use float(t) for a tensor)" if isinstance(keep, torch.Tensor) else ""
        raise ValueError(f"keep: expected a number in (0, 1], got {keep!r}{hint}")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")


def _check_moments(m: Moments) -> None:
    if not isinstance(m, (tuple, list)) or not m or not all(isinstance(t, torch.Tensor) for t in m):
        got = type(m).__name__ if not isinstance(m, (tuple, list)) else f"{[type(t).__name__ for t in m]}"
        raise ValueError(f"batch_moments: expected a tuple of tensors, e.g. moments(v) = (n, Σv, Σv²), got {got}")


def _check_schedule(interval: int, warmup: int, stats: str) -> None:
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"interval: expected an integer >= 1, got {interval!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup: expected an integer >= 0, got {warmup!r}")
    if stats not in STATS:
        raise ValueError(f"stats: expected one of {STATS}, got {stats!r}")


# ============================================================================= nn.Module shells
# Drop-in DCM for nn.Module codebases (README "Use DCM in your own model"):
#
#     head = dcm_ref.convert(model, "fc", keep=0.1)   # the nn.Linear at model.fc -> DCMLinear, same Parameters
#     opt = torch.optim.SGD(model.parameters(), lr=0.1)
#     dcm_ref.attach(model, opt)                      # the mask advances once per opt.step()
#
# Thin shells over the pure functions above (moments, merge_moments, scores_from_moments,
# mask_schedule_step, masked_linear); no formula is written twice. kan.DKANLinear reuses
# DCMModule with the DKAN functions of kan.py.
#
# When the mask moves: once per OPTIMIZER STEP, never per forward.
#   forward, train mode: z = v (W⊙M)ᵀ + b with the current mask M; the head-input moments
#     (float64, dcm_ref.moments) join a per-step pool. No host sync, no schedule decision.
#   step_mask(): the pool (summed over ranks when torch.distributed is initialised) goes
#     through ONE mask_schedule_step, which gives the mask of the next step.
#   attach(model, optimizer): an optimizer step post-hook that calls step_mask() on every
#     DCM module of the model after each optimizer.step().
# So gradient accumulation (k micro-batches, one step) scores the union of the k batches,
# and an extra train-mode forward (a probe, a second view) cannot advance the schedule.
# Difference from train.py, which scores step s's own batch before its head forward: here
# the mask of step s is scored on step s−1's batches (with W after step s−1), because a
# module sees its batch only inside its forward; step 0 uses the all-ones mask.
# Forgetting attach()/step_mask() warns once after FORGOT_AFTER training forwards.

import warnings  # noqa: E402  (kept inside this section so it can be copied alone)

from torch import nn  # noqa: E402

EVAL_MASKS = ("full", "masked")
FORGOT_AFTER = 100   # training forwards without a schedule step before the warning


def _distributed() -> bool:
    """Whether torch.distributed has a process group in this process."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _all_sum_moments(m: Moments) -> Moments:
    """Sum a moment tuple over ranks (one all-reduce) when torch.distributed is initialised.

    Every rank then scores the global batch and picks the same mask (docs/design.md §2, multi-process;
    docs/multiprocess.md). Identity in a single process.
    """
    import torch.distributed as dist
    if not _distributed():
        return m
    flat = torch.cat([t.reshape(-1) for t in m])
    dist.all_reduce(flat)
    sizes = [t.numel() for t in m]
    return tuple(c.view_as(t) for c, t in zip(flat.split(sizes), m))


class DCMModule(nn.Module):
    """Mask schedule of a DCM head as module state; subclasses supply the head math.

    Buffers (saved by state_dict, moved by .to(), broadcast by DDP): mask (C, d) 0/1,
    dcm_step, dcm_updates (int64), dcm_change, pooled_n/_s1/_s2 (float64: the
    stats="interval" pool; they stay float64 under .half()/.to(dtype)). The per-step
    pool of moments is per process and NOT a buffer: DDP would overwrite it with rank 0's.
    Subclass hooks: _features(x2d) -> feats, _moments(feats), _scores(m) -> (C, d),
    _logits(feats, mask) -> (B, C); _MASKED: names of the parameters whose (C, d, ...)
    entries the mask gates (what attach(..., freeze=True) keeps).
    """
    _F64 = ("dcm_change", "pooled_n", "pooled_s1", "pooled_s2")
    _MASKED: Tuple[str, ...] = ()

    def _init_schedule(self, shape, stat_shapes, keep, scope, interval, warmup, stats, eval_mask, device):
        _check_keep(keep)
        _check_scope(scope)
        _check_schedule(interval, warmup, stats)
        if eval_mask not in EVAL_MASKS:
            raise ValueError(f"eval_mask: expected one of {EVAL_MASKS}, got {eval_mask!r}")
        self.keep, self.scope, self.interval, self.warmup = keep, scope, interval, warmup
        self.stats, self.eval_mask = stats, eval_mask
        f64 = dict(dtype=torch.float64, device=device)
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.register_buffer("dcm_step", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("dcm_updates", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("dcm_change", torch.zeros((), **f64))
        for name, s in zip(("pooled_n", "pooled_s1", "pooled_s2"), ((),) + tuple(stat_shapes)):
            self.register_buffer(name, torch.zeros(s, **f64))
        self._step_moments: Optional[Moments] = None   # pooled since the last step_mask()
        self._forwards, self._warned, self._attached = 0, False, False
        self._before_step: Optional[list] = None   # attach(freeze=True): masked parameters before the step
        self._counts: Optional[Tuple[int, int, bool]] = None   # host copy of (step, updates, pool non-empty)

    def forward(self, x: Tensor) -> Tensor:
        """x: (*, d) -> (*, C). Train mode: current mask, moments pooled for step_mask().
        Eval mode: the full head (eval_mask="full", the paper's default) or the mask."""
        x2 = x.reshape(-1, x.shape[-1])
        feats = self._features(x2)
        if self.training:
            if x2.shape[0] > 0:   # an empty batch adds nothing to the pool (step_mask: None = no sample)
                self._step_moments = merge_moments(self._step_moments, self._moments(feats))
            if not torch.compiler.is_compiling():   # Python-side counter: kept out of compiled graphs
                self._count_forward()
            mask = self.mask
        else:
            mask = self.mask if self.eval_mask == "masked" else None
        return self._logits(feats, mask).reshape(*x.shape[:-1], -1)

    def _count_forward(self) -> None:
        self._forwards += 1
        if self._forwards >= FORGOT_AFTER and not self._warned:
            self._warned = True
            warnings.warn(f"{type(self).__name__}: {self._forwards} training forwards and no mask update; "
                          "the DCM schedule advances once per optimizer step: call dcm_ref.attach(model, "
                          "optimizer) once, or .step_mask() after every optimizer.step()", stacklevel=3)

    def mask_state(self) -> MaskState:
        """The schedule state as the pure functions take it: a copy (change read as a float: a host sync)."""
        st = self._live_state()
        pooled = None if st.pooled is None else tuple(t.clone() for t in st.pooled)
        return st._replace(mask=st.mask.clone(), pooled=pooled, change=float(st.change))

    def _live_state(self) -> MaskState:
        """The schedule state on the live buffers, no copies (mask_schedule_step replaces what
        it changes, never mutates), and no device read: step, updates and whether the pool is
        empty come from a host copy, read from the buffers once after construction or
        load_state_dict (on CUDA a read is a host sync)."""
        if self._counts is None:
            self._counts = (int(self.dcm_step), int(self.dcm_updates), float(self.pooled_n) != 0)
        step, updates, pooled_any = self._counts
        pooled = (self.pooled_n, self.pooled_s1, self.pooled_s2) if pooled_any else None
        return MaskState(self.mask, step, pooled, updates, self.dcm_change)

    def _load_mask_state(self, st: MaskState, old: MaskState) -> None:
        """Write the new state into the buffers, touching only what the step changed."""
        if st.mask is not old.mask:
            self.mask.copy_(st.mask)
        self.dcm_step.fill_(st.step)
        if st.updates != old.updates:
            self.dcm_updates.fill_(st.updates)
            self.dcm_change.copy_(st.change)
        if st.pooled is not old.pooled:
            for buf, t in zip((self.pooled_n, self.pooled_s1, self.pooled_s2), st.pooled or (None,) * 3):
                buf.zero_() if t is None else buf.copy_(t)
        self._counts = (st.step, st.updates, st.pooled is not None)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._counts = None   # new buffer values: read them again at the next step

    @torch.no_grad()
    def step_mask(self) -> None:
        """Advance the schedule by one optimizer step (attach() calls this after optimizer.step()).

        One mask_schedule_step on the moments pooled since the last call, summed over ranks
        when torch.distributed is initialised (every rank must call it: a collective). With no
        training forward since the last call (on every rank) only the step count advances.
        No device read in a single process (on CUDA: no host sync); one with several ranks
        (whether any rank saw a sample).
        """
        m = self._step_moments
        self._step_moments, self._forwards = None, 0
        if _distributed():
            m = _all_sum_moments(m if m is not None else self._empty_moments())
            m = None if float(m[0]) == 0 else m
        old = self._live_state()
        if m is None:   # no sample: only the step count advances
            st = old._replace(step=old.step + 1)
        else:
            st = mask_schedule_step(old, m, self._scores, self.keep, scope=self.scope,
                                    interval=self.interval, warmup=self.warmup, stats=self.stats)
        self._load_mask_state(st, old)

    @torch.no_grad()
    def _save_masked_params(self) -> None:
        """Before optimizer.step() (attach(..., freeze=True)): copy the parameters the mask gates."""
        self._before_step = [getattr(self, k).detach().clone() for k in self._MASKED]

    @torch.no_grad()
    def _restore_masked(self) -> None:
        """After optimizer.step(): the entries this step's mask dropped get their values from
        before the step back (freeze_masked, --dcm-freeze), so weight decay and momentum leave
        them exactly unchanged."""
        if self._before_step is None:
            return
        for k, before in zip(self._MASKED, self._before_step):
            p = getattr(self, k)
            m = self.mask.reshape(self.mask.shape + (1,) * (p.dim() - 2)).expand_as(p)
            p.copy_(freeze_masked(p, before, m))
        self._before_step = None

    def _empty_moments(self) -> Moments:
        return tuple(torch.zeros_like(b) for b in (self.pooled_n, self.pooled_s1, self.pooled_s2))

    def _apply(self, fn, recurse=True):
        # .half()/.to(dtype) would round the float64 statistics: they follow the device only.
        kept = {k: self._buffers[k] for k in self._F64}
        out = super()._apply(fn, recurse)
        for k, t in kept.items():
            self._buffers[k] = t.to(self._buffers[k].device)
        if self._step_moments is not None:
            self._step_moments = tuple(t.to(self.mask.device) for t in self._step_moments)
        return out

    def extra_repr(self) -> str:
        return (f"keep={self.keep}, scope={self.scope!r}, interval={self.interval}, warmup={self.warmup}, "
                f"stats={self.stats!r}, eval_mask={self.eval_mask!r}")


class DCMLinear(DCMModule):
    """nn.Linear with Dynamic Connection Masking (the DFC head): z = v (W⊙M)ᵀ + b.

    x: (*, in_features) -> (*, out_features); weight (C, d), bias (C,) as nn.Linear (same
    init, same names; an nn.Linear state dict lacks the DCM buffers, so load one with
    strict=False, or load it into the nn.Linear before convert()). Edge scores: Eq. 2 in its
    exact fast form from pooled moments (scores_from_moments); mask: topk_mask(keep, scope);
    schedule: mask_schedule_step(interval, warmup, stats), advanced by step_mask() once per
    optimizer step (attach() does it). Masked edges get exactly zero gradient.
    Timing: the mask of step s is scored on step s−1's batches (the module sees a batch only
    in its own forward) and step 0 uses the full head; train.py scores step s's own batch.
    """
    _MASKED = ("weight",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, keep: float = 0.1,
                 scope: str = "row", interval: int = 1, warmup: int = 0, stats: str = "batch",
                 eval_mask: str = "full", device=None, dtype=None):
        super().__init__()
        lin = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)   # PyTorch's init
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = lin.weight, lin.bias
        self._init_schedule((out_features, in_features), ((in_features,), (in_features,)),
                            keep, scope, interval, warmup, stats, eval_mask, device)

    def _features(self, x: Tensor) -> Tensor:
        return x

    def _moments(self, v: Tensor) -> Moments:
        return moments(v)

    def _scores(self, m: Moments) -> Tensor:
        return scores_from_moments(m, self.weight)

    def _logits(self, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        return masked_linear(v, self.weight, self.bias, mask)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, " + super().extra_repr())


def _resolve(model: nn.Module, name: str):
    """Dotted path -> (parent module, key, child); an integer key indexes nn.Sequential (-1 = last)."""
    parent, parts = model, name.split(".")
    for i, part in enumerate(parts):
        indexable = isinstance(parent, (nn.Sequential, nn.ModuleList))
        if indexable and part.lstrip("-").isdigit() and -len(parent) <= int(part) < len(parent):
            key, child = int(part), parent[int(part)]
        elif part in parent._modules:
            key, child = part, parent._modules[part]
        else:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"name: the model has no submodule {name!r}; its nn.Linear layers are "
                             f"{', '.join(linears) or 'none'}")
        if i < len(parts) - 1:
            parent = child
    return parent, key, child


def convert(model: nn.Module, name: str = "fc", **dcm) -> DCMLinear:
    """Replace the nn.Linear at `name` in `model` with a DCMLinear holding the SAME Parameters.

    name: dotted path, e.g. "fc" (torchvision ResNet), "head" or "head.fc" (timm), "classifier.1";
    an integer indexes an nn.Sequential, "-1" its last layer. dcm: DCMLinear's keyword
    arguments (keep, scope, interval, warmup, stats, eval_mask). The weight and bias Parameter
    objects are reused, so an optimizer built before convert() still trains them and outputs
    with an all-ones mask are unchanged; the global random state is left as it was (seeded
    runs go on drawing the same numbers). Mutates `model` in place; returns the new module.
    """
    parent, key, old = _resolve(model, name)
    if type(old) is not nn.Linear:
        raise ValueError(f"name: {name!r} is a {type(old).__name__}, expected an nn.Linear")
    cuda = [old.weight.device] if old.weight.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):   # the throwaway init of new's own weights draws no number of the caller's
        new = DCMLinear(old.in_features, old.out_features, bias=old.bias is not None,
                        device=old.weight.device, **dcm)
    new.weight, new.bias = old.weight, old.bias
    new.train(old.training)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)
    return new


class Attachment(NamedTuple):
    """What attach() installed: the optimizer hook handles and the DCM modules they step."""
    handles: tuple
    modules: tuple

    def remove(self) -> None:
        """Uninstall the hooks; the modules can be attached again (to another optimizer)."""
        for handle in self.handles:
            handle.remove()
        for m in self.modules:
            m._attached = False


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, freeze: bool = False) -> Attachment:
    """Advance every DCM module of `model` once per optimizer.step(): an optimizer step post-hook.

    freeze=True is train.py's --dcm-freeze: a step pre-hook copies the masked parameters and
    the post-hook puts back the entries that step's mask dropped (freeze_masked), so a stock
    optimizer's weight decay and momentum leave them exactly unchanged; then the mask advances.

    Collects the DCMModule instances (DCMLinear, kan.DKANLinear) present now; works through
    DDP and torch.compile wrappers (their .modules() include the original ones). A step that
    GradScaler skips (inf/NaN gradients) does not call the hook, so the schedule waits too.
    Raises ValueError if the model has no DCM module or one is already attached (two hooks
    would advance it twice per step). Returns an Attachment; .remove() undoes it.
    """
    mods = tuple(dict.fromkeys(m for m in model.modules() if isinstance(m, DCMModule)))
    if not mods:
        raise ValueError("model: no DCM module (DCMLinear, kan.DKANLinear); use dcm_ref.convert(model, name) first")
    if any(m._attached for m in mods):
        raise ValueError("model: a DCM module is already attached to an optimizer; remove() that Attachment first")

    if not isinstance(freeze, bool):
        raise ValueError(f"freeze: expected True or False, got {freeze!r}")

    def before(opt, args, kwargs):
        for m in mods:
            m._save_masked_params()

    def after(opt, args, kwargs):
        for m in mods:
            m._restore_masked()
            m.step_mask()

    handles = ((optimizer.register_step_pre_hook(before),) if freeze else ()) + (optimizer.register_step_post_hook(after),)
    for m in mods:
        m._attached = True
    return Attachment(handles, mods)
