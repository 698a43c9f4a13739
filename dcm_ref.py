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

and with the schedule (interval, warm-up) as a pure state transition, one call per optimizer step:

    state = mask_init(w.shape, device=w.device)                         # all ones
    state = mask_schedule_step(state, moments(v), lambda m: scores_from_moments(m, w), keep=0.1)
    logits = masked_linear(v, w, b, state.mask)

train.py and the drop-in run this step as layers.DCMModule's training forward (its two halves:
schedule_phase on the host, mask_step on tensors; tests/test_modules.py proves them equal).

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


# ----------------------------------------------------------------------------- other scores (ablations)
# Eq. 2 multiplies two factors, |w_jk| and std_b v_k. The mechanism ablations (docs/design.md §2,
# "Scores other than Eq. 2") keep DCM's selection, schedule and k, and change only the score:
# "magnitude" = |w| alone, "feature" = std_b v alone, "random" = neither (a uniformly random
# k-subset per class, redrawn at every mask update). SCORES names them; "std" is Eq. 2.

SCORES = ("std", "random", "magnitude", "feature")


def magnitude_scores(w: Tensor) -> Tensor:
    """S[j, k] = |w[j, k]|: dynamic magnitude pruning of the head (no batch statistics).
    w: (C, d) -> S: (C, d) in w.dtype."""
    _check_2d("w", w, "(C, d)")
    return w.detach().abs()


def feature_scores(std_v: Tensor, num_classes: int) -> Tensor:
    """S[j, k] = std_b v[b, k] for every class j: the same inputs kept for every class.
    std_v: (d,) (e.g. std_from_moments(m)) -> S: (num_classes, d), rows identical."""
    if not isinstance(std_v, torch.Tensor) or std_v.dim() != 1:
        raise ValueError(f"std_v: expected a tensor of shape (d,), got {getattr(std_v, 'shape', type(std_v).__name__)}")
    return std_v.unsqueeze(0).expand(num_classes, -1).contiguous()


_M32, _GOLDEN = 0xFFFFFFFF, 0x9E3779B9   # 2^32 − 1; an odd offset, so index 0 is not hash(0) = 0


def _mix32(x: Tensor) -> Tensor:
    """An invertible 32-bit integer hash of int64 x with values in [0, 2^32) (three xor-shift-
    multiply rounds; products stay below 2^59, so int64 arithmetic is exact on every device)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def random_scores(shape, seed: int, draw, device=None) -> Tensor:
    """Scores whose top-k per row is a uniformly random k-subset: the "random" mask.

    shape: (C, d); seed: the run's seed (an int); draw: which mask update this is (an int, or a
    0-dim integer tensor such as a module's update count) -> S: (C, d) float64, integers below
    2^32 (exact in float64). A pure function of (seed, draw, index): the same on every rank,
    device and resume, independent of the data, new at every draw. Counter-based (a hash of the
    index), not a torch.Generator, so no generator state to checkpoint and no graph break
    under torch.compile. The hash is a bijection of 32-bit integers, so scores never tie while
    C·d ≤ 2^32.
    """
    _check_shape(shape)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if isinstance(draw, torch.Tensor):
        device = draw.device if device is None else device
        draw = draw.to(device=device, dtype=torch.int64)
    else:
        draw = torch.tensor(int(draw), dtype=torch.int64, device=device)
    key = _mix32((_mix32((draw + _GOLDEN) & _M32) + int(seed)) & _M32)        # 0-dim
    idx = torch.arange(shape[0] * shape[1], dtype=torch.int64, device=device).view(tuple(shape))
    return _mix32(_mix32((idx + _GOLDEN) & _M32) ^ key).to(torch.float64)


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
# One DCM step per optimizer step (docs/design.md §2). Its host half (schedule_phase: which of
# warm-up / update / hold this step is) depends on integers only; its tensor half (mask_step:
# score, select) depends on tensors only, so a compiled forward takes it whole with no graph
# break and no recompilation per step. layers.DCMModule.forward (what train.py and the drop-in
# modules run) calls the two halves; mask_schedule_step is their composition as one pure transition.

PHASES = ("warmup", "update", "hold")


class MaskState(NamedTuple):
    """State of the mask schedule; replaced, never mutated.

    mask: (C, d) 0/1; step: optimizer steps already taken; pooled: moments pooled
    since the last update (stats="interval") or None; updates: number of mask
    recomputations; change: 1 − Jaccard(kept) at the last update, a 0-dim float64
    tensor on the mask's device (0 initially), so a schedule step never waits for the GPU.
    """
    mask: Tensor
    step: int
    pooled: Optional[Moments]
    updates: int
    change: Tensor


def mask_init(shape, dtype=torch.float32, device=None) -> MaskState:
    """Initial state: all-ones mask of shape (C, d) (plain FC), step 0, nothing pooled."""
    _check_shape(shape)
    mask = torch.ones(tuple(shape), dtype=dtype, device=device)
    return MaskState(mask, 0, None, 0, torch.zeros((), dtype=torch.float64, device=mask.device))


def schedule_phase(step: int, interval: int = 1, warmup: int = 0) -> str:
    """What optimizer step `step` (0-based) does to the mask: "warmup" (step < warmup: the full
    head), "update" (recompute it: (step − warmup) % interval == 0) or "hold" (keep the last one)."""
    _check_schedule(interval, warmup, STATS[0])
    if step < warmup:
        return "warmup"
    return "update" if (step - warmup) % interval == 0 else "hold"


def mask_due(step: int, interval: int, warmup: int) -> bool:
    """True iff the mask is recomputed at this step: schedule_phase(step, …) == "update"."""
    return schedule_phase(step, interval, warmup) == "update"


def mask_step(phase: str, mask: Tensor, batch_moments: Optional[Moments], pooled: Optional[Moments],
              score_fn: Callable[[Moments], Tensor], keep: float, scope: str = "row",
              stats: str = "batch") -> Tuple[Tensor, Optional[Moments], Optional[Tensor]]:
    """The tensor half of one DCM step (Fig. 2, Eq. 2): -> (mask, pooled, change).

    phase: schedule_phase of this step. "warmup": an all-ones mask, nothing pooled.
    "hold": the same mask; with stats="interval" the batch joins the pool. "update":
    M = topk_mask(score_fn(source), keep, scope), source = this batch's moments
    (stats="batch", Eq. 2) or the pool including this batch (stats="interval"), which
    then empties; change = mask_change_tensor(old, new) (else None: unchanged).
    batch_moments (already summed over ranks) may be None when the step does not need
    them (warm-up, or hold with stats="batch"). score_fn: Moments -> (C, d), e.g.
    lambda m: scores_from_moments(m, w). A pool of zeros is the same as None.
    """
    _check_keep(keep)
    _check_scope(scope)
    _check_schedule(1, 0, stats)
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    if phase == "warmup":
        return torch.ones_like(mask), None, None
    _check_moments(batch_moments)
    pooled = merge_moments(pooled, batch_moments) if stats == "interval" else None
    if phase == "hold":
        return mask, pooled, None
    scores = score_fn(pooled if stats == "interval" else batch_moments)
    if not isinstance(scores, torch.Tensor) or scores.shape != mask.shape:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"score_fn: expected scores of shape {tuple(mask.shape)}, got {got}")
    new = topk_mask(scores, keep, scope).to(mask.dtype)
    return new, None, mask_change_tensor(mask, new)


def mask_schedule_step(state: MaskState, batch_moments: Moments,
                       score_fn: Callable[[Moments], Tensor], keep: float,
                       scope: str = "row", interval: int = 1, warmup: int = 0,
                       stats: str = "batch") -> MaskState:
    """One step of the DCM schedule as a pure transition: schedule_phase, then mask_step.
    Call once per optimizer step, before that step's head forward, with its batch's moments.
    Returns the new state with step + 1 (and updates + 1 when the mask was recomputed)."""
    _check_schedule(interval, warmup, stats)
    _check_moments(batch_moments)
    phase = schedule_phase(state.step, interval, warmup)
    mask, pooled, change = mask_step(phase, state.mask, batch_moments, state.pooled, score_fn, keep, scope, stats)
    updated = change is not None
    return MaskState(mask, state.step + 1, pooled, state.updates + updated, change if updated else state.change)


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


def _check_shape(shape) -> None:
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2 and \
        all(isinstance(n, numbers.Integral) and n >= 0 for n in shape)
    if not ok:
        raise ValueError(f"shape: expected (C, d), two integers >= 0, got {shape!r}")


def _check_keep(keep: float) -> None:
    ok = isinstance(keep, numbers.Real) and not isinstance(keep, (bool, np.bool_)) and 0.0 < keep <= 1.0
    if not ok:
        hint = " (a Python number: use float(t) for a tensor)" if isinstance(keep, torch.Tensor) else ""
        raise ValueError(f"keep: expected a number in (0, 1], got {keep!r}{hint}")


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")


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


# ============================================================================= the drop-in modules
# DCMLinear, convert and attach live in layers.py (with kan's KAN layers) and stay reachable
# here, so `dcm_ref.convert(model, "fc")` / `dcm_ref.attach(model, opt)` keep working.

_LAYERS = ("DCMModule", "DCMLinear", "convert", "attach", "Attachment")


def __getattr__(name):   # PEP 562: imported on first use, so this module needs no torch.nn
    if name in _LAYERS:
        import layers
        return getattr(layers, name)
    raise AttributeError(f"module 'dcm_ref' has no attribute {name!r}")
