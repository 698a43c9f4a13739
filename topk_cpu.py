"""CPU fast path of dcm_ref.topk_mask (private to dcm_ref): the top-k mask of each row
by numpy's partition on the scores' bit patterns.

Exact by construction: mask_by_bits returns a mask only where it provably is the
stable-sort mask, else None (then dcm_ref falls back to torch.topk and its exact tie
fill). Proven equal to dcm_ref.topk_mask_literal by tests/test_dcm_ref.py::
test_topk_mask_equals_the_stable_sort_definition_on_random_scores, ..._under_heavy_ties_and_nan,
..._near_ties_signs_and_long_rows, ::test_nans_of_different_payloads_tie_in_index_order,
::test_bit_selection_proves_the_mask_of_distinct_nonnegative_scores,
::test_bit_selection_fills_ties_at_the_threshold_in_index_order and
::test_kth_largest_keys_are_the_kth_and_the_tie_witness_of_the_sorted_row. docs/design.md §9.
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

    flat: (R, n) on CPU, 0 < k < n -> (R, n) 0/1 in `dtype`, or None.
    Keys: a float read as a signed integer of its size sorts as its value when its
    sign bit is clear (+0 < … < +inf < +NaN bit patterns); an integer is its own key.
    t = each row's k-th largest key, u = its (k+1)-th (kth_largest_keys). A row with
    u < t has exactly k keys ≥ t: keeping them is the sort's mask, as each kept entry
    ranks strictly ahead of every dropped one. A row with a tie at t (u = t) keeps its
    keys > t and then the keys = t in index order until k are kept (_fill_ties), as a
    stable sort does. For floats this holds when
      (1) no key is negative (no sign bit: -0.0, negative numbers and NaN with
          the sign bit would sort wrongly), and
      (2) t ≤ the bits of +inf (a NaN threshold could keep one NaN and drop another,
          which tie; with t ≤ +inf every NaN is kept and ranks first, as in the sort);
    otherwise None.
    """
    if flat.dtype not in _KEYS:
        return None
    key_dtype, inf_bits = _KEYS[flat.dtype]
    keys = flat.contiguous().view(key_dtype).numpy()
    u, t = kth_largest_keys(keys, k)                                       # (R, 1) each
    if inf_bits is not None and (t.max() > inf_bits or keys.min() < 0):
        return None
    out = np.empty(keys.shape, _NUMPY_FLOAT.get(dtype, np.bool_))
    np.greater_equal(keys, t, out=out, casting="unsafe")                  # True -> 1.0: the 0/1 mask
    tied = np.flatnonzero(u[:, 0] >= t[:, 0])                              # rare: rows with a tie at t
    if tied.size:
        out[tied] = _fill_ties(keys[tied], t[tied], k)
    return torch.from_numpy(out) if dtype in _NUMPY_FLOAT else torch.from_numpy(out).to(dtype)


def _fill_ties(keys: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """keys: (r, n), t: (r, 1) their k-th largest -> (r, n) bool: every key > t, then the
    keys = t in index order (cumsum) until the row has k."""
    above, at = keys > t, keys == t
    room = k - above.sum(axis=1, keepdims=True)
    return above | (at & (np.cumsum(at, axis=1) <= room))


def kth_largest_keys(keys: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """keys: (R, n) integers, 0 < k < n -> (u, t), each (R, 1): t the k-th largest key of each
    row, and u < t exactly when the row has k keys ≥ t (u is then its (k+1)-th largest).
    One numpy partition (at one position: numpy's fast path; two positions cost 10x), u the
    largest key left of t. Rows longer than SELECT_BLOCK first shrink to _key_candidates,
    which hold every key ≥ t: their (k+1)-th largest u is at most the row's, and is ≥ t
    exactly when the row has a (k+1)-th key ≥ t."""
    if keys.shape[1] > SELECT_BLOCK:
        keys = _key_candidates(keys, k, SELECT_BLOCK)
    n = keys.shape[1]
    part = np.partition(keys, n - k, axis=1)
    return part[:, :n - k].max(axis=1, keepdims=True), part[:, n - k:n - k + 1]


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
