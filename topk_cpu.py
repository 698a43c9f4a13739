"""CPU fast paths of dcm_ref.topk_mask and dcm_ref.topk_mask_warm (private to dcm_ref): the
top-k mask of each row by numpy's partition on the scores' bit patterns, and by one comparison
with a per-row threshold kept from the last selection (the warm start).

Exact by construction: mask_by_bits returns a mask only where it provably is the
stable-sort mask, else None (then dcm_ref falls back to torch.topk and its exact tie
fill). Proven equal to dcm_ref.topk_mask_literal by tests/test_dcm_ref.py::
test_topk_mask_equals_the_stable_sort_definition_on_random_scores, ..._under_heavy_ties_and_nan,
..._near_ties_signs_and_long_rows, ::test_nans_of_different_payloads_tie_in_index_order,
::test_bit_selection_proves_the_mask_of_distinct_nonnegative_scores and
::test_kth_largest_key_is_the_kth_of_the_sorted_row; the warm start by
::test_warm_started_topk_mask_equals_the_stable_sort_definition_along_a_drifting_sequence and
::test_warm_started_topk_mask_equals_the_stable_sort_definition_when_every_row_misses. docs/design.md §9.
"""
from typing import Optional, Tuple

import numpy as np
import torch

Tensor = torch.Tensor

# Sort keys of the dtypes mask_by_bits handles: floats read as signed integers of their size
# (with the bits of +inf), integers as themselves (None: no inf).
_KEYS = {torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80),
         torch.float32: (torch.int32, 0x7F800000), torch.float64: (torch.int64, 0x7FF0000000000000),
         **{t: (t, None) for t in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}}
_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
# numpy sorts and partitions rows of up to 512 keys with SIMD networks (measured on the AMD EPYC
# of bench/README.md: about 1 ns a key, 5 ns for longer rows): longer rows go in blocks of this size.
SELECT_BLOCK = 512


def mask_by_bits(flat: Tensor, k: int, dtype: torch.dtype) -> Optional[Tensor]:
    """The stable-sort top-k mask of each row, or None where the shortcut cannot prove it.
    flat: (R, n) on CPU, 0 < k < n -> (R, n) 0/1 in `dtype`, or None (kept_by_bits)."""
    if flat.dtype not in _KEYS:
        return None
    key_dtype, inf_bits = _KEYS[flat.dtype]
    got = kept_by_bits(flat.contiguous().view(key_dtype).numpy(), k, inf_bits)
    if got is None:
        return None
    if dtype in _NUMPY_FLOAT:           # numpy's uint8 -> float cast: about twice as fast as from bool
        return torch.from_numpy(got[0].view(np.uint8).astype(_NUMPY_FLOAT[dtype]))
    return torch.from_numpy(got[0]).to(dtype)


def kept_by_bits(keys: np.ndarray, k: int, inf_bits: Optional[int], next_too: bool = False
                 ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """keys: (R, n) sort keys (_KEYS: a float's bits read as a signed integer, inf_bits those of
    +inf; an integer is its own key, inf_bits None), 0 < k < n -> (kept: (R, n) bool, the
    k-th largest key t of each row: (R, 1); next_too: (R, 2), the (k+1)-th then the k-th), or
    None where the shortcut cannot prove the mask.
    A float's bits sort as its value when its sign bit is clear (+0 < … < +inf < +NaN bit
    patterns). kept = keys ≥ t is the stable-sort mask when
      (1) exactly k keys per row are ≥ t (no tie at t: each kept entry ranks
          strictly ahead of every dropped one), and for floats
      (2) no key is negative (no sign bit: -0.0, negative numbers and NaN with
          the sign bit would sort wrongly), and
      (3) t ≤ the bits of +inf (a NaN threshold could keep one NaN and drop another,
          which tie; with t ≤ +inf every NaN is kept and ranks first, as in the sort).
    """
    t = kth_largest_key(keys, k, next_too)
    if inf_bits is not None and (t[:, -1].max() > inf_bits or keys.min() < 0):
        return None
    kept = np.greater_equal(keys, t[:, -1:])
    if not (kept.view(np.uint8).sum(axis=1, dtype=np.int32) == k).all():   # a tie at t
        return None
    return kept, t


def kth_largest_key(keys: np.ndarray, k: int, next_too: bool = False) -> np.ndarray:
    """keys: (R, n) integers, 0 < k < n -> (R, 1): the k-th largest key of each row; next_too:
    (R, 2), the (k+1)-th then the k-th (numpy's partition; rows longer than SELECT_BLOCK
    first shrink to _key_candidates)."""
    if keys.shape[1] > SELECT_BLOCK:
        keys = _key_candidates(keys, k + next_too, SELECT_BLOCK)
    n = keys.shape[1]
    part = np.partition(keys, n - k, axis=1)   # one kth: numpy's SIMD path (two kth: 20x slower)
    t = part[:, n - k:n - k + 1]
    if not next_too:
        return t
    return np.concatenate([part[:, :n - k].max(axis=1, keepdims=True), t], axis=1)   # all below t: ≤ t


def _key_candidates(keys: np.ndarray, k: int, block: int) -> np.ndarray:
    """A sub-multiset of each row holding its k largest keys, from sorted blocks.

    keys: (R, n) integers, 0 < k < n -> (R, nb·m) with nb = ⌈n / block⌉, m ≤ block.
    The row (padded with the smallest key) is nb blocks, each sorted (fast: SIMD).
    With kb = ⌈k / nb⌉, L = min over blocks of the block's kb-th largest: every
    block has kb keys ≥ L, so the row has ≥ k, and its k-th largest is ≥ L. The
    last m keys of each block, m grown until they hold every key ≥ L, therefore
    hold the row's k largest keys (with their multiplicities).
    """
    R, n = keys.shape
    nb = -(-n // block)
    if nb * block != n:
        pad = np.full((R, nb * block - n), np.iinfo(keys.dtype).min, keys.dtype)
        keys = np.concatenate([keys, pad], axis=1)
    s = np.sort(keys.reshape(R, nb, block), axis=2)                        # (R, nb, block) ascending
    kb = -(-k // nb)
    low = s[:, :, block - kb].min(axis=1, keepdims=True)                   # (R, 1): L
    m = min(block, 2 * kb + 16)
    while m < block and not (s[:, :, block - m - 1] < low).all():         # a key ≥ L left out
        m = min(block, 2 * m)
    return s[:, :, block - m:].reshape(R, nb * m)


# ----------------------------------------------------------------------------- warm start
# Between two mask updates W and std_b v move little, so the last update's threshold between each
# row's k-th and (k+1)-th largest score usually still separates this update's k largest.

WARM_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_WARM_KEYS = {np.dtype(np.float32): (np.int32, 0x7F800000), np.dtype(np.float64): (np.int64, 0x7FF0000000000000)}


def rows_above(s: np.ndarray, k: int, hint: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The rows a threshold decides. s: (R, n) float32/float64 scores, 0 < k < n, hint: (R, 1)
    thresholds t of s's dtype -> (kept: (R, n) uint8 0/1, indices of the undecided rows).

    It keeps not (s <= t): the scores above the row's threshold t, and NaN. A row with
    exactly k kept is decided: each kept score is NaN or > t, each dropped one a number <= t,
    so the kept ones are the first k of the stable descending sort (NaN ranks first; ties at t
    fall among the dropped; t = NaN keeps all n, never k).
    """
    kept = np.logical_not(np.less_equal(s, hint)).view(np.uint8)
    return kept, np.flatnonzero(kept.sum(axis=1, dtype=np.int32) != k)


def kept_and_thresholds(sub: np.ndarray, k: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The stable-sort top-k of rows and their next thresholds, or None (kept_by_bits).
    sub: (r, n) float32/float64, 0 < k < n -> (kept: (r, n) bool, (r, 1) halfway between the
    k-th and (k+1)-th largest score of each row)."""
    key_dtype, inf_bits = _WARM_KEYS[sub.dtype]
    got = kept_by_bits(sub.view(key_dtype), k, inf_bits, next_too=True)
    if got is None:
        return None
    t = got[1].view(sub.dtype)                   # (r, 2) non-negative floats: no overflow below
    return got[0], t[:, :1] / 2 + t[:, 1:] / 2


def midpoints(s: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Next thresholds: halfway between each row's smallest kept and largest dropped score.
    s: (r, n) float, kept: (r, n) bool with 0 < kept < n per row -> (r, 1) in s's dtype
    (NaN where a NaN is kept or dropped: such a row is then never decided, only slower)."""
    lo = np.min(s, axis=1, where=kept, initial=np.inf, keepdims=True)
    hi = np.max(s, axis=1, where=~kept, initial=-np.inf, keepdims=True)
    return lo / 2 + hi / 2                       # halves first: no overflow to inf
