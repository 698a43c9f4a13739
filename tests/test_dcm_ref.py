"""Properties of dcm_ref.py: DCM on a fully connected head (Fig. 2, Eq. 2; docs/design.md §2).

Random inputs come from a hypothesis-drawn seed and shape, so each example is
a reproducible (B, C, d, dtype, magnitude) case, including B = 1, constant
features and magnitudes up to 1e4.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dcm_ref as D
from conftest import check_one_line_value_error
import topk_cpu

DTYPES = st.sampled_from([torch.float32, torch.float64])
SCALES = st.sampled_from([1.0, 1e3, 1e4])
KEEPS = st.floats(min_value=0.01, max_value=1.0)


@st.composite
def head_case(draw, min_batch=1):
    """(v: (B, d), w: (C, d)) with optional constant feature columns and a large offset."""
    B = draw(st.integers(min_batch, 24))
    C = draw(st.integers(1, 8))
    d = draw(st.integers(1, 12))
    dtype, scale = draw(DTYPES), draw(SCALES)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    v = torch.randn(B, d, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):                       # large mean, small spread: cancellation-prone
        v = v / scale + scale
    constant = torch.rand(d, generator=g) < 0.3   # constant features must score 0
    v[:, constant] = v[0, constant]
    w = torch.randn(C, d, generator=g, dtype=torch.float64)
    return v.to(dtype), w.to(dtype)


def random_scores(seed, C, d, dtype=torch.float64):
    return torch.rand(C, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def score_tolerance(v, w):
    """Per-entry tolerance for two std computations of A: a few dozen ulps of max_b |A[b, j, k]|."""
    eps = torch.finfo(v.dtype).eps
    scale = w.abs().double() * v.abs().double().amax(dim=0)
    return 64 * eps * scale


# ----------------------------------------------------------------------------- Fig. 2, Eq. 2

@given(head_case())
def test_edge_activations_sum_to_the_logits(case):
    v, w = case
    A = D.edge_activations(v, w)
    assert A.shape == (v.shape[0], w.shape[0], v.shape[1])
    eps = torch.finfo(v.dtype).eps
    scale = A.abs().sum(dim=2)                    # both sums round relative to Σ|A|
    assert bool(((A.sum(dim=2) - v @ w.T).abs() <= 4 * v.shape[1] * eps * scale).all())


@given(head_case())
def test_literal_scores_equal_fast_scores(case):
    v, w = case
    lit, fast = D.edge_scores_literal(v, w), D.edge_scores(v, w)
    assert lit.shape == fast.shape == w.shape and fast.dtype == lit.dtype
    err = (lit.double() - fast.double()).abs()
    assert bool((err <= score_tolerance(v, w)).all()), err.max()


@given(head_case(), st.integers(1, 8))
def test_batch_of_one_scores_zero_not_nan(case, C):
    v, w = case
    v1 = v[:1]
    assert torch.equal(D.edge_scores(v1, w), torch.zeros_like(w))
    assert torch.equal(D.edge_scores_literal(v1, w), torch.zeros_like(w))


def test_fast_scores_never_build_the_batch_class_feature_tensor():
    # B·C·d float64 would be 8 GB here; the fast form needs only (B + C)·d.
    v, w = torch.randn(4096, 512), torch.randn(512, 512)
    assert D.edge_scores(v, w).shape == (512, 512)


# ----------------------------------------------------------------------------- selection

@given(st.integers(0, 10**6), st.integers(1, 10), st.integers(1, 40), KEEPS)
def test_row_scope_keeps_exactly_k_per_row(seed, C, d, keep):
    M = D.topk_mask(random_scores(seed, C, d), keep, "row")
    k = max(1, round(keep * d))
    assert torch.equal(M.sum(dim=1), torch.full((C,), float(k), dtype=M.dtype))


@given(st.integers(0, 10**6), st.integers(1, 10), st.integers(1, 40), KEEPS)
def test_global_scope_keeps_exactly_round_keep_times_size(seed, C, d, keep):
    # keep times the number of edges, C·d (0.3·3·15 is 13.4999… in floats; 0.3·45 is 13.5)
    M = D.topk_mask(random_scores(seed, C, d), keep, "global")
    assert int(M.sum()) == max(1, round(keep * (C * d)))


@given(st.integers(0, 10**6), st.integers(1, 10), st.integers(2, 40), KEEPS,
       st.sampled_from(["row", "global"]))
def test_kept_edges_score_at_least_as_high_as_masked_edges(seed, C, d, keep, scope):
    S = random_scores(seed, C, d)
    M = D.topk_mask(S, keep, scope)
    S_rows, M_rows = (S, M) if scope == "row" else (S.reshape(1, -1), M.reshape(1, -1))
    lowest_kept = torch.where(M_rows == 1, S_rows, torch.inf).amin(dim=1)
    highest_masked = torch.where(M_rows == 0, S_rows, -torch.inf).amax(dim=1)
    assert bool((lowest_kept >= highest_masked).all())


@given(st.integers(1, 10), st.integers(1, 40), KEEPS, st.floats(-5, 5))
def test_equal_scores_keep_the_first_indices(C, d, keep, value):
    S = torch.full((C, d), value)
    k = max(1, round(keep * d))
    expected_row = (torch.arange(d) < k).float().expand(C, d)
    assert torch.equal(D.topk_mask(S, keep, "row"), expected_row)
    n = max(1, round(keep * (C * d)))
    expected_global = (torch.arange(C * d) < n).float().reshape(C, d)
    assert torch.equal(D.topk_mask(S, keep, "global"), expected_global)


def test_ties_among_some_scores_break_by_index():
    S = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert D.topk_mask(S, 0.4).tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0]]


@given(st.integers(0, 10**6), st.integers(1, 6), st.integers(1, 12), DTYPES, KEEPS,
       st.sampled_from(["row", "global"]))
def test_mask_has_the_scores_dtype_and_only_zeros_and_ones(seed, C, d, dtype, keep, scope):
    M = D.topk_mask(random_scores(seed, C, d, dtype), keep, scope)
    assert M.dtype == dtype and M.shape == (C, d)
    assert bool(((M == 0) | (M == 1)).all())


SPECIALS = [0.0, -0.0, 1.0, 2.0, -1.0, 0.5, math.inf, -math.inf, math.nan]
ALL_DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@st.composite
def tied_scores(draw):
    """(C, d) scores drawn from a palette of 1-4 values (zeros of both signs, ±inf, NaN
    included), so most rows tie at the k-th largest score."""
    C, d = draw(st.integers(1, 8)), draw(st.integers(1, 40))
    palette = torch.tensor(draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=4)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    picks = torch.randint(0, len(palette), (C, d), generator=g)
    return palette[picks].to(draw(ALL_DTYPES))


@given(tied_scores(), KEEPS, st.sampled_from(["row", "global"]))
def test_topk_mask_equals_the_stable_sort_definition_under_heavy_ties_and_nan(S, keep, scope):
    got, want = D.topk_mask(S, keep, scope), D.topk_mask_literal(S, keep, scope)
    assert got.dtype == want.dtype and torch.equal(got, want)


@given(tied_scores(), KEEPS, st.sampled_from(["row", "global"]))
def test_gpu_selection_path_without_host_reads_equals_the_stable_sort_definition(S, keep, scope):
    """Off the CPU, topk_mask skips its host-side checks and always runs the exact tie fill
    (host_checks=False); that path, run here on CPU, is the stable-sort mask too."""
    flat, k = D._selection_rows(S, keep, scope)
    if k == flat.shape[1]:
        return
    flat = flat.to(torch.uint8) if flat.dtype == torch.bool else flat
    top = torch.topk(flat, k, dim=1, sorted=False).values
    got = D._first_k_by_rank(flat, top, k, host_checks=False).to(S.dtype).reshape(S.shape)
    assert torch.equal(got, D.topk_mask_literal(S, keep, scope))


def test_schedule_stores_the_mask_change_as_a_tensor_equal_to_mask_change():
    """The schedule keeps 1 − Jaccard as a 0-dim float64 tensor (no host read per step)."""
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    v = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    state = D.mask_init(w.shape)
    assert state.change.shape == () and float(state.change) == 0.0
    new = D.mask_schedule_step(state, D.moments(v), lambda m: D.scores_from_moments(m, w), 0.3)
    assert new.change.dtype == torch.float64 and new.change.shape == ()
    assert float(new.change) == D.mask_change_literal(state.mask, new.mask) > 0


@given(st.integers(0, 10**6), st.integers(1, 10), st.integers(1, 60), ALL_DTYPES, KEEPS,
       st.sampled_from(["row", "global"]))
def test_topk_mask_equals_the_stable_sort_definition_on_random_scores(seed, C, d, dtype, keep, scope):
    S = random_scores(seed, C, d).to(dtype)       # float16/bfloat16 rounding adds a few ties
    got, want = D.topk_mask(S, keep, scope), D.topk_mask_literal(S, keep, scope)
    assert got.dtype == want.dtype and torch.equal(got, want)


SELECT_BLOCKS = st.sampled_from([2, 3, 8, 512])   # topk_cpu.SELECT_BLOCK: small ones exercise the blocked selection


def with_bits_changed(x, delta):
    """x: float tensor -> the same floats with delta added to their bit patterns (neighbouring floats)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    return (x.view(ints) + delta).view(x.dtype)


@st.composite
def near_tied_scores(draw):
    """(C, d) float scores with exact ties, near-ties (neighbouring floats, one bit apart),
    -0.0 beside +0.0, negative numbers, ±inf, NaN of both signs and several payloads;
    rows up to 1100 long."""
    dtype = draw(ALL_DTYPES)
    C, d = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 7, 40, 513, 1100]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    S = (torch.randn if draw(st.booleans()) else torch.rand)(C, d, generator=g, dtype=torch.float64).to(dtype)
    for _ in range(draw(st.integers(0, 3))):   # copy an entry of the row, maybe one bit up or down
        src, dst = (torch.randint(0, d, (C, d), generator=g) for _ in range(2))
        p = draw(st.sampled_from([0.05, 0.3, 0.9]))
        moved = with_bits_changed(S.gather(1, src), draw(st.sampled_from([-1, 0, 1])))
        S = torch.where(torch.rand(C, d, generator=g) < p, moved, S)
    nan = torch.tensor(math.nan, dtype=dtype)
    palette = torch.stack([torch.tensor(v, dtype=dtype) for v in (0.0, -0.0, -1.0, math.inf, -math.inf)]
                          + [nan, torch.copysign(nan, torch.tensor(-1.0, dtype=dtype)),
                             with_bits_changed(nan, 1), with_bits_changed(nan, -1)])   # other NaN payloads
    use = torch.tensor(draw(st.lists(st.integers(0, len(palette) - 1), min_size=1, max_size=3)))
    special = torch.rand(C, d, generator=g) < draw(st.sampled_from([0.0, 0.002, 0.05, 0.5]))
    picks = palette[use[torch.randint(0, len(use), (C, d), generator=g)]]
    return torch.where(special, picks, S)


@settings(max_examples=200, deadline=None)
@given(near_tied_scores(), KEEPS, st.sampled_from(["row", "global"]), SELECT_BLOCKS)
def test_topk_mask_equals_the_stable_sort_definition_near_ties_signs_and_long_rows(S, keep, scope, block):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk_cpu, "SELECT_BLOCK", block)
        got = D.topk_mask(S, keep, scope)
    want = D.topk_mask_literal(S, keep, scope)
    assert got.dtype == want.dtype and torch.equal(got, want)


@settings(deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 6), st.sampled_from([2, 9, 100, 513, 1100]),
       st.sampled_from([torch.float32, torch.float64]), KEEPS, SELECT_BLOCKS)
def test_bit_selection_proves_the_mask_of_distinct_nonnegative_scores(seed, C, d, dtype, keep, block):
    """Eq. 2 scores (|w|·std ≥ 0, no ties) take the CPU fast path, not the exact fallback, so
    an error in it cannot hide behind the fallback; and its mask is the stable-sort one."""
    S = random_scores(seed, C, d, dtype)
    k = D.kept_count(keep, d)
    if k == d or S.unique().numel() != S.numel():
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk_cpu, "SELECT_BLOCK", block)
        got = topk_cpu.mask_by_bits(S, k, dtype)
    assert got is not None and torch.equal(got, D.topk_mask_literal(S, keep))


@settings(deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 6), st.sampled_from([2, 9, 100, 513, 1100]), ALL_DTYPES,
       st.sampled_from([3, 30, 3000]), KEEPS, SELECT_BLOCKS)
def test_bit_selection_fills_ties_at_the_threshold_in_index_order(seed, C, d, dtype, levels, keep, block):
    """Non-negative scores with ties (few distinct values; a tie at the k-th score in some rows, as
    float32 Eq. 2 scores have now and then): the CPU fast path still decides every row, no
    fallback, and keeps the tied entries of lower index first, as the stable sort does."""
    g = torch.Generator().manual_seed(seed)
    S = (torch.randint(0, levels, (C, d), generator=g).double() / 7).to(dtype)
    k = D.kept_count(keep, d)
    if k == d:
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk_cpu, "SELECT_BLOCK", block)
        got = topk_cpu.mask_by_bits(S, k, dtype)
    assert got is not None and got.dtype == dtype and torch.equal(got, D.topk_mask_literal(S, keep))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nans_of_different_payloads_tie_in_index_order(dtype):
    """NaN bit patterns differ (payload), but NaNs tie: the lower index is kept first, so
    a threshold among the NaN patterns must not decide (the bit selection sorts by pattern)."""
    nan = torch.tensor(math.nan, dtype=dtype)
    low, high = nan, with_bits_changed(nan, 1)
    S = torch.stack([low, high, high, low, torch.tensor(1.0, dtype=dtype), high, low])[None, :]
    for keep in [i / S.shape[1] for i in range(1, S.shape[1])]:
        for T in (S, S.flip(1)):
            assert torch.equal(D.topk_mask(T, keep), D.topk_mask_literal(T, keep)), (T, keep)


@given(st.integers(0, 10**6), st.integers(1, 5), st.integers(2, 600), st.integers(2, 64),
       st.sampled_from(["uniform", "one block holds the top", "few values"]))
def test_kth_largest_keys_are_the_kth_and_the_tie_witness_of_the_sorted_row(seed, R, n, block, layout):
    """The blocked candidate pool keeps every row's k largest keys, whatever the layout; and
    u < t exactly when the (k+1)-th largest key of the row is below the k-th (no tie at t)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(-1000, 1000 if layout != "few values" else -997, (R, n), generator=g)
    if layout == "one block holds the top":
        keys[:, :min(block, n)] += 5000
    k = int(torch.randint(1, n, (), generator=g)) if layout != "one block holds the top" else min(block, n - 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk_cpu, "SELECT_BLOCK", block)
        u, t = topk_cpu.kth_largest_keys(keys.numpy(), k)
    ordered = keys.sort(dim=1, descending=True).values
    assert torch.equal(torch.from_numpy(t), ordered[:, k - 1:k])
    assert torch.equal(torch.from_numpy(u < t), ordered[:, k:k + 1] < ordered[:, k - 1:k])


@given(st.integers(0, 10**6), st.integers(1, 6), st.integers(1, 60), KEEPS,
       st.sampled_from([torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64]))
def test_topk_mask_of_integer_scores_equals_the_stable_sort_definition(seed, C, d, keep, dtype):
    g = torch.Generator().manual_seed(seed)
    S = torch.randint(-3 if dtype not in (torch.bool, torch.uint8) else 0, 3, (C, d), generator=g).to(dtype)
    for scope in ("row", "global"):
        assert torch.equal(D.topk_mask(S, keep, scope), D.topk_mask_literal(S, keep, scope))


def test_nan_scores_rank_first_and_tie_in_index_order():
    nan = math.nan
    S = torch.tensor([[1.0, nan, 3.0, nan, 2.0], [nan, 1.0, nan, nan, 1.0], [nan, 1.0, 1.0, 0.0, 0.0]])
    assert D.topk_mask(S, 0.6).tolist() == [[0, 1, 1, 1, 0], [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    # globally k = 5: the first 5 of the 6 NaNs in flat index order
    assert D.topk_mask(S, 1 / 3, "global").tolist() == [[0, 1, 0, 1, 0], [1, 0, 1, 1, 0], [0] * 5]


@given(head_case(), st.booleans())
def test_keep_one_reproduces_plain_linear_bit_for_bit(case, with_bias):
    v, w = case
    b = torch.randn(w.shape[0], dtype=w.dtype) if with_bias else None
    M = D.topk_mask(D.edge_scores(v, w), 1.0)
    assert torch.equal(M, torch.ones_like(w))
    assert torch.equal(D.masked_linear(v, w, b, M), F.linear(v, w, b))
    assert torch.equal(D.masked_linear(v, w, b, None), F.linear(v, w, b))


@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32, torch.float64])
def test_a_mask_of_another_dtype_does_not_promote_the_head(w_dtype, mask_dtype):
    """z keeps w's dtype whatever the mask's (a float64 or float32 mask must not promote a
    half-precision head), and equals the head with the 0/1 mask applied in w's dtype."""
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(4, 6, generator=g).to(w_dtype), torch.randn(3, 6, generator=g).to(w_dtype)
    M = D.topk_mask(torch.rand(3, 6, generator=g), 0.5)
    z = D.masked_linear(v, w, None, M.to(mask_dtype))
    assert z.dtype == w_dtype and torch.equal(z, F.linear(v, w * M.to(w_dtype)))


# ----------------------------------------------------------------------------- gradients

def masked_case(seed, B, C, d, keep):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    M = D.topk_mask(torch.rand(C, d, generator=g, dtype=torch.float64), keep)
    return v, w, b, M, g


@given(st.integers(0, 10**6), st.integers(1, 16), st.integers(1, 8), st.integers(1, 12), KEEPS)
def test_masked_weights_get_exactly_zero_gradient(seed, B, C, d, keep):
    v, w, b, M, g = masked_case(seed, B, C, d, keep)
    z = D.masked_linear(v, w, b, M)
    (z * torch.randn(z.shape, generator=g, dtype=z.dtype)).sum().backward()
    assert bool((w.grad[M == 0] == 0.0).all())


@given(st.integers(0, 10**6), st.integers(1, 16), st.integers(1, 8), st.integers(1, 12), KEEPS)
def test_feature_gradient_is_upstream_times_masked_weights(seed, B, C, d, keep):
    v, w, b, M, g = masked_case(seed, B, C, d, keep)
    z = D.masked_linear(v, w, b, M)
    up = torch.randn(z.shape, generator=g, dtype=z.dtype)
    (z * up).sum().backward()
    torch.testing.assert_close(v.grad, up @ (w.detach() * M), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- moments

def split_batches(seed, sizes, d, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) * scale + scale for n in sizes]


@given(st.integers(0, 10**6), st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(1, 10))
def test_merged_moments_of_split_batches_equal_moments_of_the_whole(seed, sizes, d):
    parts = split_batches(seed, sizes, d)
    pooled = None
    for v in parts:
        pooled = D.merge_moments(pooled, D.moments(v))
    whole = D.moments(torch.cat(parts))
    assert all(t.dtype == torch.float64 for t in pooled)
    assert float(pooled[0]) == sum(sizes)
    for a, b in zip(pooled, whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_merge_with_none_is_identity():
    m = D.moments(torch.randn(3, 4))
    assert D.merge_moments(None, m) is m and D.merge_moments(m, None) is m


@given(st.integers(0, 10**6), st.lists(st.integers(1, 9), min_size=1, max_size=5),
       st.integers(1, 8), st.integers(1, 10), SCALES)
def test_scores_from_pooled_moments_equal_scores_on_concatenated_batches(seed, sizes, C, d, scale):
    parts = split_batches(seed, sizes, d, scale)
    w = torch.randn(C, d, generator=torch.Generator().manual_seed(seed + 1))
    pooled = None
    for v in parts:
        pooled = D.merge_moments(pooled, D.moments(v))
    got, want = D.scores_from_moments(pooled, w), D.edge_scores(torch.cat(parts), w)
    assert got.dtype == w.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=float(score_tolerance(parts[0], w).max()))


@given(head_case(), st.booleans())
def test_moments_are_float64_sums_of_the_features_bit_for_bit(case, transposed):
    v = case[0].T.contiguous().T if transposed else case[0]   # column-major input too
    vd = v.double()
    n, s1, s2 = D.moments(v)
    assert float(n) == v.shape[0]
    assert torch.equal(s1, vd.sum(dim=0)) and torch.equal(s2, (vd * vd).sum(dim=0))


@given(head_case())
def test_moments_and_scores_leave_their_inputs_unchanged(case):
    v, w = case                                   # float64 inputs: no dtype copy to hide behind
    v0, w0 = v.clone(), w.clone()
    D.scores_from_moments(D.moments(v), w)
    assert torch.equal(v, v0) and torch.equal(w, w0)


@given(st.integers(0, 10**6), st.integers(1, 8), st.integers(1, 12), ALL_DTYPES)
def test_scores_from_moments_round_the_float64_products_once_bit_for_bit(seed, C, d, dtype):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(C, d, generator=g, dtype=torch.float64)
         * 10.0 ** torch.randint(-20, 20, (C, d), generator=g)).to(dtype)
    w.view(-1)[:4] = torch.tensor([-0.0, math.inf, math.nan, -math.inf])[:w.numel()]
    v = torch.randn(5, d, generator=g, dtype=torch.float64)
    v = v * 10.0 ** torch.randint(-20, 20, (d,), generator=g)
    m = D.moments(v)
    want = (w.double().abs() * D.std_from_moments(m)).to(dtype)
    got = D.scores_from_moments(m, w)
    assert got.dtype == dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@given(st.integers(0, 10**6), st.integers(1, 9), st.integers(1, 12), ALL_DTYPES, st.integers(1, 40))
def test_scores_from_moments_in_row_blocks_equal_the_whole_matrix_bit_for_bit(seed, C, d, dtype, block):
    """On CPU the scores are computed in row blocks of dcm_ref._SCORE_BLOCK entries; any block
    size gives the float64 products rounded once, as one block does."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, d, generator=g, dtype=torch.float64).to(dtype)
    m = D.moments(torch.randn(5, d, generator=g, dtype=torch.float64))
    want = (w.double().abs() * D.std_from_moments(m)).to(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "_SCORE_BLOCK", block)
        got = D.scores_from_moments(m, w)
    assert got.dtype == dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_std_from_moments_of_constant_features_is_zero_not_nan():
    # Σv²/n − (Σv/n)² rounds to −2.2e-16 here; the clamp keeps the std at 0.
    std = D.std_from_moments(D.moments(torch.full((7, 1), 0.7, dtype=torch.float64)))
    assert std.tolist() == [0.0]


def test_std_from_moments_is_population_std_in_float64():
    v = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    std = D.std_from_moments(D.moments(v))
    assert std.dtype == torch.float64 and std.tolist() == [1.0, 0.0]


# ----------------------------------------------------------------------------- schedule

def run_schedule(steps, keep, interval, warmup, stats, C=3, d=6, seed=0):
    """Simulate a run with random scores; returns per-step states and the scores score_fn made."""
    g = torch.Generator().manual_seed(seed)
    made, seen = [], []

    def score_fn(m):
        seen.append(m)
        made.append(torch.rand(C, d, generator=g, dtype=torch.float64))
        return made[-1]

    state, states = D.mask_init((C, d), dtype=torch.float64), []
    for _ in range(steps):
        batch = D.moments(torch.randn(int(torch.randint(1, 5, (1,), generator=g)), d, generator=g))
        state = D.mask_schedule_step(state, batch, score_fn, keep, "row", interval, warmup, stats)
        states.append((state, batch))
    return states, made, seen


@given(st.integers(1, 40), st.floats(0.05, 0.95), st.integers(1, 6), st.integers(0, 10),
       st.sampled_from(["batch", "interval"]))
@settings(max_examples=30)
def test_schedule_updates_exactly_at_warmup_plus_multiples_of_interval(steps, keep, interval, warmup, stats):
    states, made, _ = run_schedule(steps, keep, interval, warmup, stats)
    due = set(range(warmup, steps, interval))
    previous = D.mask_init((3, 6), dtype=torch.float64)
    for s, (state, _) in enumerate(states):
        assert state.step == s + 1
        assert state.updates == previous.updates + (s in due)
        if s in due:
            assert torch.equal(state.mask, D.topk_mask(made[state.updates - 1], keep))
            assert state.change == D.mask_change(previous.mask, state.mask)
        else:
            assert torch.equal(state.mask, previous.mask)
        previous = state
    assert len(made) == len(due)


@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 12))
@settings(max_examples=30)
def test_schedule_mask_is_all_ones_before_warmup(steps, interval, warmup):
    states, _, _ = run_schedule(steps, 0.3, interval, warmup, "batch")
    for state, _ in states[:warmup]:
        assert torch.equal(state.mask, torch.ones(3, 6, dtype=torch.float64))


@given(st.integers(1, 30), st.integers(1, 5), st.integers(0, 6))
@settings(max_examples=30)
def test_interval_stats_pool_every_batch_since_the_last_update(steps, interval, warmup):
    states, _, seen = run_schedule(steps, 0.5, interval, warmup, "interval")
    batches = [batch for _, batch in states]
    for i, s in enumerate(range(warmup, steps, interval)):
        first = warmup if s == warmup else s - interval + 1
        expected = None
        for m in batches[first:s + 1]:
            expected = D.merge_moments(expected, m)
        for a, b in zip(seen[i], expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert states[s][0].pooled is None


@given(st.integers(1, 20), st.integers(1, 5), st.integers(0, 6))
@settings(max_examples=30)
def test_batch_stats_score_only_the_current_batch(steps, interval, warmup):
    states, _, seen = run_schedule(steps, 0.5, interval, warmup, "batch")
    for i, s in enumerate(range(warmup, steps, interval)):
        assert seen[i] is states[s][1]


@given(st.integers(0, 10**6), st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(2, 12))
@settings(max_examples=30)
def test_interval_schedule_scores_equal_batch_scores_on_concatenated_batches(seed, sizes, d):
    """With interval t = number of batches, the update after them scores exactly the concatenation."""
    parts = split_batches(seed, sizes, d)
    w = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = []

    def score_fn(m):
        got.append(D.scores_from_moments(m, w))
        return got[-1]

    t, state = len(parts), D.mask_init(w.shape, dtype=w.dtype)
    for v in parts + [parts[0]]:            # update at step 0 (one batch), then at step t
        state = D.mask_schedule_step(state, D.moments(v), score_fn, 0.5, interval=t, stats="interval")
    want = D.edge_scores(torch.cat(parts[1:] + [parts[0]]).double(), w)
    torch.testing.assert_close(got[-1], want, rtol=1e-6, atol=1e-9)


@given(st.integers(0, 60), st.integers(1, 7), st.integers(0, 9))
def test_schedule_phase_is_warmup_then_update_every_interval(step, interval, warmup):
    """The host half of a DCM step, against its definition: warm-up before `warmup`, then an
    update at warmup + k·interval and a hold in between."""
    phase = D.schedule_phase(step, interval, warmup)
    if step < warmup:
        assert phase == "warmup"
    else:
        assert phase == ("update" if (step - warmup) % interval == 0 else "hold")
    assert D.mask_due(step, interval, warmup) == (phase == "update")


@given(st.sampled_from(D.PHASES), st.sampled_from(D.STATS), st.integers(0, 999), st.booleans())
@settings(max_examples=40)
def test_mask_step_does_what_its_phase_says(phase, stats, seed, pooled_before):
    """The tensor half: warm-up gives ones and empties the pool; hold keeps the mask (and pools
    with stats="interval"); update selects top-k of the source's scores and empties the pool."""
    g = torch.Generator().manual_seed(seed)
    w, mask = torch.randn(3, 6, generator=g), (torch.rand(3, 6, generator=g) < 0.5).float()
    m = D.moments(torch.randn(4, 6, generator=g))
    pool = D.moments(torch.randn(5, 6, generator=g)) if pooled_before else None
    new, pooled, change = D.mask_step(phase, mask, m, pool, lambda mm: D.scores_from_moments(mm, w), 0.5, "row", stats)
    merged = D.merge_moments(pool, m) if stats == "interval" else None
    if phase == "warmup":
        assert torch.equal(new, torch.ones_like(mask)) and pooled is None and change is None
    elif phase == "hold":
        assert new is mask and change is None
        assert pooled is None if stats == "batch" else all(torch.equal(a, b) for a, b in zip(pooled, merged))
    else:
        source = merged if stats == "interval" else m
        assert torch.equal(new, D.topk_mask(D.scores_from_moments(source, w), 0.5)) and pooled is None
        assert float(change) == D.mask_change_literal(mask, new)


def test_mask_step_treats_a_pool_of_zeros_as_empty():
    """layers.DCMModule keeps the pool as zero buffers: the same mask as an empty (None) pool."""
    g = torch.Generator().manual_seed(3)
    w, m = torch.randn(4, 5, generator=g), D.moments(torch.randn(6, 5, generator=g))
    zeros = tuple(torch.zeros_like(t) for t in m)
    a = D.mask_step("update", torch.ones(4, 5), m, None, lambda mm: D.scores_from_moments(mm, w), 0.4, stats="interval")
    b = D.mask_step("update", torch.ones(4, 5), m, zeros, lambda mm: D.scores_from_moments(mm, w), 0.4, stats="interval")
    assert torch.equal(a[0], b[0]) and float(a[2]) == float(b[2])


# ----------------------------------------------------------------------------- --dcm-freeze

def sgd_run(freeze, steps=5, seed=0):
    """Full-mask steps first (so momentum buffers are non-zero everywhere), then masked steps."""
    g = torch.Generator().manual_seed(seed)
    v, y = torch.randn(32, 10, generator=g), torch.randint(4, (32,), generator=g)
    w = torch.nn.Parameter(torch.randn(4, 10, generator=g))
    b = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=1e-2)
    M = D.topk_mask(D.edge_scores(v, w.detach()), 0.5)
    w_at_mask = None
    for step in range(2 * steps):
        mask = None if step < steps else M
        if step == steps:
            w_at_mask = w.detach().clone()
        opt.zero_grad()
        F.cross_entropy(D.masked_linear(v, w, b, mask), y).backward()
        w_before = w.detach().clone()
        opt.step()
        if freeze and mask is not None:
            with torch.no_grad():
                w.copy_(D.freeze_masked(w, w_before, mask))
    return w.detach(), w_at_mask, M


def test_freeze_leaves_masked_entries_unchanged_through_sgd_with_momentum_and_weight_decay():
    w, w_at_mask, M = sgd_run(freeze=True)
    assert torch.equal(w[M == 0], w_at_mask[M == 0])
    assert bool((w[M == 1] != w_at_mask[M == 1]).all())


def test_stock_sgd_moves_masked_entries_without_freeze():
    w, w_at_mask, M = sgd_run(freeze=False)
    assert bool((w[M == 0] != w_at_mask[M == 0]).all())


def test_freeze_takes_masked_entries_from_before_and_the_rest_from_after():
    after, before = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[7.0, 8.0, 9.0]])
    assert D.freeze_masked(after, before, torch.tensor([[1.0, 0.0, 1.0]])).tolist() == [[1.0, 8.0, 3.0]]


# ----------------------------------------------------------------------------- diagnostics

@pytest.mark.parametrize("old, new, change", [
    ([[1, 1, 0, 0]], [[1, 1, 0, 0]], 0.0),
    ([[1, 1, 0, 0]], [[0, 0, 1, 1]], 1.0),
    ([[1, 1, 0, 0]], [[0, 1, 1, 0]], 1 - 1 / 3),
    ([[1, 1, 1, 0]], [[1, 0, 0, 0]], 1 - 1 / 3),
    ([[0, 0, 0, 0]], [[0, 0, 0, 0]], 0.0),
])
def test_mask_change_is_one_minus_jaccard(old, new, change):
    assert D.mask_change(torch.tensor(old, dtype=torch.float32),
                         torch.tensor(new, dtype=torch.float32)) == pytest.approx(change)


@given(st.integers(0, 10**6), st.integers(1, 8), st.integers(1, 30), st.floats(0, 1), st.floats(0, 1),
       st.sampled_from([torch.float32, torch.float64, torch.bool]),
       st.sampled_from([torch.float32, torch.bool]))
def test_mask_change_fast_path_equals_jaccard_on_bools(seed, C, d, p_old, p_new, dtype_old, dtype_new):
    g = torch.Generator().manual_seed(seed)
    old, new = torch.rand(C, d, generator=g) < p_old, torch.rand(C, d, generator=g) < p_new
    kept_old = set(old.flatten().nonzero().flatten().tolist())
    kept_new = set(new.flatten().nonzero().flatten().tolist())
    union = kept_old | kept_new
    want = 1.0 - len(kept_old & kept_new) / len(union) if union else 0.0
    old, new = old.to(dtype_old), new.to(dtype_new)
    assert D.mask_change(old, new) == want
    assert D.mask_change_literal(old, new) == want     # the fast path equals Jaccard on bools
    a, b = D._exact_count_view(old.double()), D._exact_count_view(new.double())
    assert float(D._change_on_device(a, b)) == want    # the GPU's path, run here on CPU tensors


def test_mask_change_counts_exactly_past_float32_integers():
    n = 2**24 + 1                                 # float32 sums of n ones round to 2**24
    old, new = torch.ones(1, n), torch.ones(1, n)
    new[0, -1] = 0
    assert D.mask_change(old, new) == 1.0 - (n - 1) / n


@pytest.mark.parametrize("mask, fraction", [
    ([[1, 1, 0, 0]], 0.5), ([[1, 1], [1, 0]], 0.75), ([[0, 0, 0]], 0.0), ([[1]], 1.0)])
def test_kept_fraction_is_the_share_of_kept_edges(mask, fraction):
    assert D.kept_fraction(torch.tensor(mask, dtype=torch.float32)) == fraction


def test_mask_due_matches_the_schedule_definition():
    assert [s for s in range(12) if D.mask_due(s, 3, 2)] == [2, 5, 8, 11]
    assert [s for s in range(4) if D.mask_due(s, 1, 0)] == [0, 1, 2, 3]


@pytest.mark.parametrize("shape, scope", [((3, 0), "row"), ((0, 4), "row"), ((3, 0), "global"), ((0, 4), "global")])
def test_an_empty_score_matrix_gives_an_empty_mask(shape, scope):
    scores = torch.rand(shape)
    for select in (D.topk_mask, D.topk_mask_literal):
        mask = select(scores, 0.5, scope)
        assert mask.shape == shape and mask.dtype == scores.dtype


@pytest.mark.parametrize("keep", [np.float32(0.25), np.float64(0.25), np.int64(1)])
def test_numpy_scalars_are_accepted_as_keep(keep):
    scores = torch.rand(4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(D.topk_mask(scores, keep), D.topk_mask(scores, float(keep)))
    assert type(D.kept_count(keep, 8)) is int


# ----------------------------------------------------------------------------- torch.compile
# A training forward may score and select inside torch.compile(fullgraph=True): topk_mask and
# mask_change_tensor then take their torch-only paths (the GPU ones), never numpy.

def scoring_forward(v, w, b, m_old, keep=0.75):
    """moments -> scores -> mask -> masked head -> mask change: z (B, C), M (C, d), change ()."""
    M = D.topk_mask(D.scores_from_moments(D.moments(v), w), keep)
    return D.masked_linear(v, w, b, M), M, D.mask_change_tensor(m_old, M)


def tied_head_case(seed, B=16, C=5, d=12):
    """v: (B, d) with every other feature constant (score 0: a tie the fill must break by index)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, d, generator=g)
    v[:, ::2] = 1.5
    return v, torch.randn(C, d, generator=g), torch.randn(C, generator=g), (torch.rand(C, d, generator=g) < 0.5).float()


def run_and_backward(fn, v, w, b, m_old):
    v, w, b = (t.clone().requires_grad_() for t in (v, w, b))
    z, M, change = fn(v, w, b, m_old)
    (z * torch.linspace(-1, 1, z.numel()).reshape(z.shape)).sum().backward()
    return z.detach(), M, change, v.grad, w.grad, b.grad


def test_compiled_scoring_forward_and_backward_equal_eager_without_graph_breaks():
    torch._dynamo.reset()
    compiled = torch.compile(scoring_forward, fullgraph=True)     # fullgraph: a graph break raises
    for seed in range(3):
        case = tied_head_case(seed)
        z, M, change, *grads = run_and_backward(compiled, *case)
        z0, M0, change0, *grads0 = run_and_backward(scoring_forward, *case)
        assert torch.equal(M, M0) and int(M.sum()) == 5 * 9        # 6 scores > 0, then 3 of the 6 tied at 0
        torch.testing.assert_close(change, change0, rtol=1e-12, atol=0)
        torch.testing.assert_close(z, z0)
        for g, g0 in zip(grads, grads0):
            torch.testing.assert_close(g, g0)


@pytest.mark.parametrize("scope", ["row", "global"])
def test_compiled_topk_mask_equals_the_stable_sort_definition_under_ties_and_nan(scope):
    torch._dynamo.reset()
    compiled = torch.compile(lambda S: D.topk_mask(S, 0.3, scope), fullgraph=True)
    palette = torch.tensor(SPECIALS)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        S = torch.where(torch.rand(6, 40, generator=g) < 0.5, torch.rand(6, 40, generator=g).round(decimals=1),
                        palette[torch.randint(0, len(SPECIALS), (6, 40), generator=g)])
        assert torch.equal(compiled(S), D.topk_mask_literal(S, 0.3, scope)), seed


def test_compiled_paths_never_call_the_cpu_fast_paths_and_eager_does(monkeypatch):
    """Inside torch.compile no numpy (topk_cpu, _change_on_host) is traced; eager CPU keeps them."""
    calls = []

    def refuse(*args):
        calls.append(args)
        raise RuntimeError("a CPU fast path was called")

    monkeypatch.setattr(topk_cpu, "mask_by_bits", refuse)
    monkeypatch.setattr(D, "_change_on_host", refuse)
    torch._dynamo.reset()
    case = tied_head_case(0)
    torch.compile(scoring_forward, fullgraph=True)(*case)
    assert calls == []
    with pytest.raises(RuntimeError, match="fast path"):
        scoring_forward(*case)


# ----------------------------------------------------------------------------- bad input

V, W = torch.randn(4, 3), torch.randn(2, 3)
ONES = D.mask_init((2, 3))
BAD_CALLS = {   # what is wrong: (the argument the message must name first, the call)
    "v not 2-D": ("v", lambda: D.edge_scores(torch.randn(4), W)),
    "w not 2-D": ("w", lambda: D.edge_scores_literal(V, torch.randn(2, 3, 1))),
    "d mismatch": ("v, w", lambda: D.edge_activations(V, torch.randn(2, 5))),
    "empty batch": ("v", lambda: D.edge_scores(torch.randn(0, 3), W)),
    "integer v": ("v", lambda: D.edge_scores(torch.tensor([[0, 3], [2, 0]]), torch.ones(1, 2))),
    "integer w, literal": ("w", lambda: D.edge_scores_literal(V, torch.ones(2, 3, dtype=torch.int64))),
    "mask shape": ("mask", lambda: D.masked_linear(V, W, None, torch.ones(3, 2))),
    "bias shape": ("b", lambda: D.masked_linear(V, W, torch.zeros(3), None)),
    "bias a list": ("b", lambda: D.masked_linear(V, W, [0.0, 0.0], None)),
    "keep 0": ("keep", lambda: D.topk_mask(W, 0.0)),
    "keep > 1": ("keep", lambda: D.topk_mask(W, 1.5)),
    "keep nan": ("keep", lambda: D.topk_mask(W, float("nan"))),
    "keep a tensor": ("keep", lambda: D.topk_mask(W, torch.tensor(0.5))),
    "keep a bool": ("keep", lambda: D.topk_mask(W, True)),
    "scope": ("scope", lambda: D.topk_mask(W, 0.5, "column")),
    "scores not 2-D": ("scores", lambda: D.topk_mask(torch.rand(5), 0.5)),
    "interval 0": ("interval", lambda: D.mask_schedule_step(ONES, D.moments(V), lambda m: W, 0.5, interval=0)),
    "warmup < 0": ("warmup", lambda: D.mask_schedule_step(ONES, D.moments(V), lambda m: W, 0.5, warmup=-1)),
    "stats": ("stats", lambda: D.mask_schedule_step(ONES, D.moments(V), lambda m: W, 0.5, stats="epoch")),
    "schedule keep": ("keep", lambda: D.mask_schedule_step(ONES, D.moments(V), lambda m: W, 2.0)),
    "score_fn shape": ("score_fn", lambda: D.mask_schedule_step(ONES, D.moments(V), lambda m: W.T, 0.5)),
    "no moments": ("batch_moments", lambda: D.mask_schedule_step(ONES, None, lambda m: W, 0.5)),
    "moments of numbers": ("batch_moments", lambda: D.mask_schedule_step(ONES, (4, 1.0, 2.0), lambda m: W, 0.5)),
    "mask_due interval 0": ("interval", lambda: D.mask_due(3, 0, 0)),
    "mask_due warmup < 0": ("warmup", lambda: D.mask_due(3, 1, -2)),
    "moments length": ("m", lambda: D.std_from_moments(D.moments(V)[:2])),
    "moments features": ("m", lambda: D.scores_from_moments(D.moments(torch.randn(4, 5)), W)),
    "merge lengths": ("b", lambda: D.merge_moments(D.moments(V), D.moments(V)[:2])),
    "freeze shape": ("w_before", lambda: D.freeze_masked(W, torch.randn(3, 2), torch.ones(2, 3))),
    "freeze mask shape": ("mask", lambda: D.freeze_masked(W, W, torch.ones(3, 2))),
    "change shape": ("m_new", lambda: D.mask_change(torch.ones(2, 3), torch.ones(3, 2))),
    "change literal, old not a tensor": ("m_old", lambda: D.mask_change_literal([[1, 0]], torch.ones(1, 2))),
    "mask_init shape": ("shape", lambda: D.mask_init((5,))),
    "mask_init a number": ("shape", lambda: D.mask_init(5)),
    "empty kept_fraction": ("mask", lambda: D.kept_fraction(torch.ones(0, 3))),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_a_one_line_value_error_naming_the_argument(name):
    check_one_line_value_error(*BAD_CALLS[name])


# ----------------------------------------------------------------------------- other scores (ablations)

@settings(max_examples=40)
@given(C=st.integers(1, 9), d=st.integers(1, 40), keep=KEEPS, seed=st.integers(0, 2**31 - 1), draw=st.integers(0, 10**6),
       scope=st.sampled_from(D.SCOPES))
def test_every_ablation_score_keeps_exactly_k_edges(C, d, keep, seed, draw, scope):
    g = torch.Generator().manual_seed(seed % 1000)
    w, v = torch.randn(C, d, generator=g), torch.randn(5, d, generator=g)
    k = D.kept_count(keep, d if scope == "row" else C * d)
    for S in (D.random_scores((C, d), seed, draw), D.magnitude_scores(w),
              D.feature_scores(D.std_from_moments(D.moments(v)), C)):
        assert S.shape == (C, d)
        M = D.topk_mask(S, keep, scope)
        assert torch.equal(M, D.topk_mask_literal(S, keep, scope))
        counts = M.sum(dim=1) if scope == "row" else M.sum().reshape(1)
        assert (counts == k).all()


@given(C=st.integers(1, 30), d=st.integers(1, 300), seed=st.integers(-2**40, 2**40), draw=st.integers(0, 2**40))
def test_random_scores_are_a_function_of_seed_and_draw_only_and_never_tie(C, d, seed, draw):
    S = D.random_scores((C, d), seed, draw)
    assert S.dtype == torch.float64 and S.unique().numel() == C * d        # a bijective hash: no ties
    assert ((S >= 0) & (S < 2**32) & (S == S.round())).all()
    assert torch.equal(S, D.random_scores((C, d), seed, torch.tensor(draw)))   # a tensor draw (a module's counter)
    if d >= 20:   # distinct draws and seeds give other orders (a fixed order would be one subset forever)
        for other in (D.random_scores((C, d), seed, draw + 1), D.random_scores((C, d), seed + 1, draw)):
            assert not torch.equal(S.argsort(dim=1), other.argsort(dim=1))


def test_random_masks_keep_every_edge_equally_often():
    """Over 2000 draws each of the 1000 edges is kept 200 times in expectation (Binomial, sd 13.4):
    every count lies within 5 sd, and the rows' kept sets are not all alike."""
    counts = torch.zeros(20, 50)
    for t in range(2000):
        counts += D.topk_mask(D.random_scores((20, 50), 3, t), 0.1)
    assert counts.sum() == 2000 * 20 * 5
    assert ((counts - 200).abs() < 5 * 13.4).all()
    first = D.topk_mask(D.random_scores((20, 50), 3, 0), 0.1)
    assert len({tuple(r.tolist()) for r in first}) > 1                # classes draw their own subsets


@given(head_case(min_batch=2))
def test_magnitude_and_feature_scores_are_the_two_factors_of_eq2(case):
    v, w = case
    std = D.std_from_moments(D.moments(v))
    F_ = D.feature_scores(std, w.shape[0])
    assert torch.equal(D.magnitude_scores(w), w.abs())
    assert F_.shape == w.shape and all(torch.equal(row, std) for row in F_)   # one row per class, all alike
    assert torch.allclose(D.scores_from_moments(D.moments(v), w).double(), (D.magnitude_scores(w).double() * F_),
                          rtol=1e-5, atol=0)


@pytest.mark.parametrize("argument, call", [
    ("shape", lambda: D.random_scores((3,), 0, 0)),
    ("seed", lambda: D.random_scores((3, 4), 1.5, 0)),
    ("std_v", lambda: D.feature_scores(torch.ones(2, 3), 2)),
    ("score", lambda: D._check_score("rand")),
])
def test_ablation_score_arguments_are_one_line_errors(argument, call):
    check_one_line_value_error(argument, call)
