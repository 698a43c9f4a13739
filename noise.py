"""Label noise for dcm-ref (docs/design.md §5): transition matrices, exact seeded
corruption, instance-dependent noise (Xia et al., NeurIPS'20), CIFAR-N human
labels, and the noise report saved with every run.

Everything synthetic goes through one row-stochastic matrix
T[i, j] = P(noisy = j | clean = i) and one corruption routine, so the noise a
run trains on is exactly the noise its report describes.

    T = transition_matrix("asymmetric", 10, 0.4, dataset="cifar10")
    noisy = corrupt_labels(labels, T, seed=0)            # exact counts per class
    report = noise_report(labels, noisy, 10)             # rate, per_class, T
"""
import os
import pickle
import warnings

import numpy as np
import torch

# Asymmetric class maps, docs/design.md §5 (src -> dst). CIFAR-10, MNIST and
# Fashion-MNIST are the maps of APL/ANL (Ma et al. ICML'20, Ye et al.
# NeurIPS'23); "digits" is the 8x8 digit set and reuses the MNIST map.
# CIFAR-100 follows the APL/ANL/ELR convention: blocks of 5 consecutive fine
# labels, i -> next in its block (circular). That is NOT the true superclass
# structure; see superclass_transition_matrix for that.
ASYM_MAPS = {
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},  # truck→automobile, bird→airplane, cat↔dog, deer→horse
    "mnist": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "digits": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "fashion-mnist": {9: 7, 7: 5, 2: 6, 4: 3, 3: 4},  # boot→sneaker, sneaker→sandal, pullover→shirt, coat↔dress
    "cifar100": {i: 5 * (i // 5) + (i + 1) % 5 for i in range(100)},
}
_ASYM_NUM_CLASSES = {"cifar10": 10, "mnist": 10, "digits": 10, "fashion-mnist": 10, "cifar100": 100}
_DATASET_ALIASES = {"cifar10n": "cifar10", "cifar100n": "cifar100"}

# CIFAR-N (Wei et al. ICLR'22) label files: our names -> keys in the .pt dict.
CIFAR_N_KEYS = {
    10: {"aggre": "aggre_label", "worst": "worse_label", "rand1": "random_label1",
         "rand2": "random_label2", "rand3": "random_label3", "clean": "clean_label"},
    100: {"noisy100": "noisy_label", "clean": "clean_label"},
}
CIFAR_N_LENGTH = 50000  # CIFAR train set, torchvision order

IDN_STD = 0.1  # std of the per-sample flip rate q_i (Xia et al. NeurIPS'20, Alg. 2)


# ----------------------------------------------------------------------------- checks

def _check_rate(rate):
    """rate: float in [0, 1) -> float."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"rate: expected a number in [0, 1), got {rate!r}")
    return float(rate)


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def _to_numpy(a):
    """numpy array, torch tensor (any device) or sequence -> numpy array (no copy when possible)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _labels_to_numpy(labels, num_classes, name="labels"):
    """labels: (N,) integers in [0, C) as numpy/torch/sequence -> (N,) int64 numpy copy."""
    y = _to_numpy(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ValueError(f"{name}: expected a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: values must lie in [0, {num_classes}), got min {y.min()} max {y.max()}")
    return y.astype(np.int64)


def _like(noisy, labels):
    """noisy: (N,) int64 numpy -> same container, dtype and device as `labels`."""
    if isinstance(labels, torch.Tensor):
        return torch.from_numpy(noisy).to(device=labels.device, dtype=labels.dtype)
    if isinstance(labels, np.ndarray):
        return noisy.astype(labels.dtype)
    return noisy


def _check_transition(T):
    """T: (C, C) row-stochastic (numpy or torch) -> float64 numpy copy."""
    T = np.array(_to_numpy(T), dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise ValueError(f"T: expected a square (C, C) matrix with C >= 2, got shape {T.shape}")
    if not np.isfinite(T).all() or (T < 0).any() or not np.allclose(T.sum(1), 1.0, atol=1e-6):
        raise ValueError("T: expected non-negative finite rows that sum to 1 (row-stochastic)")
    return T / T.sum(axis=1, keepdims=True)  # remove the tolerated 1e-6 so counts add up exactly


def _warn_if_true_class_not_majority(T, what):
    """Warn when some clean class is no more likely than another noisy label:
    learning is still possible in principle, but the majority vote is gone."""
    off = T - np.diag(np.diag(T))
    if (np.diag(T) <= off.max(axis=1)).any():
        warnings.warn(f"{what}: the true class is no longer the most likely noisy label "
                      "(it becomes a minority); continuing as asked", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- transition matrices

def normalise_dataset(name):
    """Dataset name -> key of ASYM_MAPS ("CIFAR10N" -> "cifar10", "fashion_mnist" -> "fashion-mnist")."""
    key = str(name).strip().lower().replace("_", "-")
    return _DATASET_ALIASES.get(key, key)


def _asymmetric(num_classes, rate, dataset):
    """(C, C): T[s, s] = 1 - r, T[s, m(s)] = r for every source s of the map m; other rows identity."""
    key = None if dataset is None else normalise_dataset(dataset)
    if key not in ASYM_MAPS:
        supported = ", ".join(ASYM_MAPS) + " (aliases: " + ", ".join(_DATASET_ALIASES) + ")"
        raise ValueError(f"dataset: asymmetric noise has no class map for {dataset!r}; supported: {supported}")
    if num_classes != _ASYM_NUM_CLASSES[key]:
        raise ValueError(f"num_classes: dataset {key!r} has {_ASYM_NUM_CLASSES[key]} classes, got {num_classes}")
    T = np.eye(num_classes)
    for src, dst in ASYM_MAPS[key].items():
        T[src, src], T[src, dst] = 1.0 - rate, rate
    return T


def transition_matrix(kind, num_classes, rate, dataset=None, include_true=False):
    """Noise transition matrix T: (C, C) float64, T[i, j] = P(noisy = j | clean = i), rows sum to 1.

    kind "symmetric":  T = (1-r) I + r/(C-1) off the diagonal (true class excluded,
                       APL/ANL); include_true=True gives T = (1-r) I + r/C 1 (ELR,
                       DivideMix; effective flip rate r (C-1)/C).
    kind "pairflip":   T[i, i] = 1-r, T[i, (i+1) mod C] = r.
    kind "asymmetric": class map of `dataset` (ASYM_MAPS); each source class keeps
                       1-r and sends r to its target; classes outside the map stay clean.
    `dataset` is only read for "asymmetric". Warns (UserWarning) when the rate makes
    the true class no more likely than another label (symmetric r >= (C-1)/C).
    For true CIFAR-100 superclasses use superclass_transition_matrix.
    """
    C, r = _check_num_classes(num_classes), _check_rate(rate)
    if include_true and kind != "symmetric":
        raise ValueError(f"include_true: only defined for kind='symmetric', got kind={kind!r}")
    if kind == "symmetric":
        T = (1.0 - r) * np.eye(C) + r / C if include_true else \
            (1.0 - r) * np.eye(C) + r / (C - 1) * (1.0 - np.eye(C))
    elif kind == "pairflip":
        T = (1.0 - r) * np.eye(C) + r * np.roll(np.eye(C), 1, axis=1)
    elif kind == "asymmetric":
        T = _asymmetric(C, r, dataset)
    else:
        raise ValueError(f"kind: expected 'symmetric', 'pairflip' or 'asymmetric' "
                         f"(superclass noise: superclass_transition_matrix), got {kind!r}")
    _warn_if_true_class_not_majority(T, f"{kind} noise with rate={r}")
    return T


def superclass_transition_matrix(fine_to_coarse, rate):
    """True-superclass noise (`--noise cifar100-superclass`): T: (C, C) float64.

    fine_to_coarse: (C,) int, the coarse label of each fine label (C = 100 for
    CIFAR-100, from its pickle's coarse_labels). Convention [choice]: each fine
    class keeps 1-r and spreads r uniformly over the OTHER fine classes of its
    own superclass (r/4 each on CIFAR-100), unlike the block map of ASYM_MAPS,
    which sends all of r to one neighbour.
    """
    f2c = _to_numpy(fine_to_coarse)
    if f2c.ndim != 1 or f2c.size < 2 or not np.issubdtype(f2c.dtype, np.integer):
        raise ValueError(f"fine_to_coarse: expected a 1-D integer array of length >= 2, got shape {f2c.shape} "
                         f"dtype {f2c.dtype}")
    r = _check_rate(rate)
    others = (f2c[:, None] == f2c[None, :]) & ~np.eye(f2c.size, dtype=bool)
    m = others.sum(axis=1)
    if (m == 0).any():
        lonely = int(f2c[np.argmin(m)])
        raise ValueError(f"fine_to_coarse: superclass {lonely} has a single fine class, cannot flip within it")
    T = (1.0 - r) * np.eye(f2c.size) + r * others / m[:, None]
    _warn_if_true_class_not_majority(T, f"superclass noise with rate={r}")
    return T


# ----------------------------------------------------------------------------- corruption

def _sample_categorical(P, rng):
    """P: (N, C) rows of probabilities -> (N,) int64, row k drawn from Categorical(P[k]).

    Inverse CDF with the last column forced to exactly 1 and u in (0, 1]: a
    zero-probability class is never returned, even at the float edges."""
    cdf = np.cumsum(P, axis=1)
    cdf /= cdf[:, -1:]
    u = 1.0 - rng.random(P.shape[0])
    return (cdf < u[:, None]).sum(axis=1)


COUNT_DECIMALS = 9  # products T[i, j] n_i are read to 9 decimals before rounding (docs/design.md §5)


def _expected_counts(p, n):
    """p: (C,) probabilities, n: class size -> (C,) float64 p n read to COUNT_DECIMALS decimals.

    Undoes float fuzz, so that counts round as written: 0.29 * 100 = 28.999...
    reads 29, and a flip rate 1 - 0.985 = 0.015000000000000013 times 100 reads
    exactly 1.5 (not 1.5000000000000013, which would round up in one class and,
    after another row's last-bit fuzz, down in an identical one). The matrix's
    fuzz is a few ulp (~1e-16 relative), far below the 5e-10 this absorbs for
    any class of fewer than ~10^6 samples."""
    return np.round(np.asarray(p, dtype=np.float64) * n, COUNT_DECIMALS)


def _flip_count(t_ii, n):
    """Number of the n samples of clean class i that leave it: round((1 - T[i, i]) n),
    halves to even (numpy rint), the product read by _expected_counts -> int."""
    return int(np.rint(_expected_counts(1.0 - t_ii, n)))


def _class_counts(row, i, n, rng):
    """row: (C,) = T[i], n = n_i -> (C,) int64 counts summing to n.

    counts[i] = n - _flip_count(T[i, i], n). The flips are spread over the
    targets j != i by largest remainder of T[i, j] n (ties broken at random):
    each target gets floor(T[i, j] n) or one more, i.e. within 1 of T[i, j] n,
    and the flips add up exactly; targets with T[i, j] = 0 get none."""
    v = _expected_counts(row, n)
    counts = np.floor(v).astype(np.int64)
    counts[i] = n - _flip_count(row[i], n)
    short = n - counts.sum()
    frac = np.where((np.arange(row.size) != i) & (row > 0), v - np.floor(v), -1.0)
    assert 0 <= short <= (frac > 0).sum(), (short, frac)  # largest remainders never runs dry
    order = np.lexsort((rng.random(row.size), -frac))
    counts[order[:short]] += 1
    return counts


def _exact_corruption(y, T, rng):
    """y: (N,) int64, T: (C, C) -> (N,) int64 with exactly _class_counts(T[i], i, n_i)[j] labels i -> j.

    One seeded permutation; within each clean class its members (in permuted
    order) are cut into contiguous chunks, one chunk per target, so each sample
    is assigned once: no sample is flipped twice (APL's sequential loop flips
    some cat->dog->cat)."""
    perm = rng.permutation(y.size)
    y_perm = y[perm]
    noisy = y.copy()
    for i in range(T.shape[0]):
        idx = perm[y_perm == i]
        noisy[idx] = np.repeat(np.arange(T.shape[0]), _class_counts(T[i], i, idx.size, rng))
    return noisy


def corrupt_labels(labels, T, seed, sampling="exact"):
    """Corrupt clean labels with transition matrix T (docs/design.md §5).

    labels: (N,) int in [0, C), numpy or torch; T: (C, C) row-stochastic; seed: int.
    sampling "exact" (default): within each clean class i exactly
        round((1 - T[i, i]) n_i) samples are flipped (round half to even, the
        product read to COUNT_DECIMALS decimals), no sample twice; these flips are
        spread over the targets j != i by largest remainder, so target j gets
        floor(T[i, j] n_i) or one more and the total is exact. Classes with equal
        rows and sizes flip the same number.
    sampling "bernoulli": each label drawn independently from T[y].
    Returns (N,) noisy labels of the same type, dtype and device as `labels`;
    deterministic per seed (numpy.random.default_rng).
    """
    T = _check_transition(T)
    y = _labels_to_numpy(labels, T.shape[0])
    rng = np.random.default_rng(_check_seed(seed))
    if sampling == "exact":
        noisy = _exact_corruption(y, T, rng)
    elif sampling == "bernoulli":
        noisy = _sample_categorical(T[y], rng)
    else:
        raise ValueError(f"sampling: expected 'exact' or 'bernoulli', got {sampling!r}")
    return _like(noisy, labels)


# ----------------------------------------------------------------------------- instance-dependent noise

def _truncated_normal(mean, std, low, high, size, rng):
    """(size,) float64 draws of N(mean, std^2) truncated to [low, high], by inverse CDF."""
    a, b = (torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64)),
            torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64)))
    u = a + (b - a) * torch.from_numpy(rng.random(size))
    return np.clip(mean + std * torch.special.ndtri(u).numpy(), low, high)


def _idn_probabilities(x, labels, q, num_classes, rng):
    """Noisy-label distribution of Xia et al. NeurIPS'20 (Alg. 2), P: (N, C).

    x: (N, D) features, labels: (N,) int64, q: (N,) per-sample flip rates.
    W ~ N(0, 1) of shape (C, D, C), drawn class by class from rng. With
    x̂ = x / ||x||_2 [choice, docs/design.md §5]: s = x̂ᵀ W[y], s[y] = -inf,
    P = q softmax(s), P[y] = 1 - q. Samples are grouped by clean class so the
    whole thing is C matmuls (n_c, D) @ (D, C), no loop over samples.
    The L2 normalisation keeps the logits at unit scale whatever D and the
    pixel range (uint8 or [0, 1] give the same P); raw 3072-d pixels would give
    near one-hot softmaxes.
    """
    N, C = x.shape[0], num_classes
    P = np.empty((N, C))
    for c in range(C):
        W_c = rng.standard_normal((x.shape[1], C))  # drawn even for empty classes: fixed stream per seed
        idx = np.flatnonzero(labels == c)
        # float32 matmul: ~10x faster than float64 on 50 000 x 3072 and its
        # 1e-7 relative error is far below anything a noise model resolves
        x_c = x[idx].astype(np.float32)
        norm = np.sqrt(np.einsum("nd,nd->n", x_c, x_c, dtype=np.float64))[:, None]
        s = (x_c @ W_c.astype(np.float32)).astype(np.float64) / np.maximum(norm, 1e-12)
        if not np.isfinite(s).all():
            raise ValueError("x: contains non-finite values")
        s[:, c] = -np.inf
        e = np.exp(s - s.max(axis=1, keepdims=True))
        P[idx] = q[idx, None] * e / e.sum(axis=1, keepdims=True)
        P[idx, c] = 1.0 - q[idx]
    return P


def instance_dependent(x, labels, rate, num_classes, seed):
    """Instance-dependent noise (Xia et al. NeurIPS'20; docs/design.md §5).

    x: (N, ...) inputs, numpy or torch, uint8 or float (flattened to (N, D));
    labels: (N,) int in [0, C); rate: mean flip rate r in [0, 1).
    Per-sample flip rate q_i ~ TruncNormal(r, 0.1) on [0, 1]; noisy label drawn
    from _idn_probabilities. The realised rate is ≈ E[q], which the truncation
    at 0 lifts above r when r is within ~2 std of 0. Measured (C = 10, 5000
    samples, D = 64, seeds 0-2): r = 0.02 -> E[q] = 0.0875, realised 0.085-0.086
    (4x the request); r = 0.2 -> E[q] = 0.2055, realised 0.200-0.211; r = 0.4 ->
    E[q] = 0.4000, realised 0.400-0.406. Rate 0 gives q = 0, i.e. the clean
    labels. Returns (N,) labels like `labels`; deterministic per seed and
    independent of x's device.
    """
    C, r = _check_num_classes(num_classes), _check_rate(rate)
    y = _labels_to_numpy(labels, C)
    x = _to_numpy(x)
    if x.ndim < 2 or x.shape[0] != y.size or not (np.issubdtype(x.dtype, np.integer)
                                                   or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"x: expected a numeric (N, ...) array with N = len(labels) = {y.size}, "
                         f"got shape {x.shape} dtype {x.dtype}")
    rng = np.random.default_rng(_check_seed(seed))
    # rate 0 means clean labels [choice]: TruncNormal(0, 0.1) on [0, 1] would flip ~8 %.
    q = _truncated_normal(r, IDN_STD, 0.0, 1.0, y.size, rng) if r > 0 else np.zeros(y.size)
    P = _idn_probabilities(x.reshape(y.size, int(np.prod(x.shape[1:]))), y, q, C, rng)
    return _like(_sample_categorical(P, rng), labels)


# ----------------------------------------------------------------------------- CIFAR-N

def _numpy_safe_globals():
    """What a pickled dict of numpy arrays needs beyond torch's weights-only
    defaults: the array reconstructor (under its numpy 1.x and 2.x module
    names, since the CIFAR-N files predate numpy 2), ndarray, dtype and the
    numeric dtype classes. Nothing here can run code."""
    reconstruct = np.zeros(1).__reduce__()[0]
    dtype_classes = {type(np.dtype(c)) for c in np.typecodes["AllInteger"] + np.typecodes["Float"] + "?"}
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtype_classes]


def _safe_load(path):
    """torch.load with weights_only=True and numpy allow-listed -> loaded object."""
    if not hasattr(torch.serialization, "safe_globals"):
        raise RuntimeError(f"reading CIFAR-N files safely needs torch >= 2.6, this is torch {torch.__version__}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"path: CIFAR-N label file {os.fspath(path)!r} not found") from None
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError) as e:
        raise ValueError(f"path: {os.fspath(path)!r} is not a CIFAR-N label file torch's weights-only loader "
                         f"accepts ({type(e).__name__}; only tensors and numpy arrays are allowed)") from None


def load_cifar_n(path, which, num_classes):
    """CIFAR-N human labels (Wei et al. ICLR'22) -> (50000,) int64, torchvision train order.

    path: CIFAR-10_human.pt (num_classes=10; which in aggre, worst, rand1, rand2,
    rand3, clean) or CIFAR-100_human.pt (num_classes=100; which in noisy100, clean).
    Read with torch's weights-only unpickler, never plain pickle.
    """
    if num_classes not in CIFAR_N_KEYS:
        raise ValueError(f"num_classes: CIFAR-N exists for 10 or 100 classes, got {num_classes!r}")
    names = CIFAR_N_KEYS[num_classes]
    if which not in names:
        raise ValueError(f"which: expected one of {', '.join(names)} for CIFAR-{num_classes}N, got {which!r}")
    data = _safe_load(path)
    key = names[which]
    if not isinstance(data, dict) or key not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"path: {os.fspath(path)!r} has no key {key!r} (found {found})")
    labels = _to_numpy(data[key])
    if labels.shape != (CIFAR_N_LENGTH,):
        raise ValueError(f"path: {key!r} in {os.fspath(path)!r} has shape {labels.shape}, "
                         f"expected ({CIFAR_N_LENGTH},)")
    return _labels_to_numpy(labels, num_classes, name=f"{key} in {os.fspath(path)!r}")


# ----------------------------------------------------------------------------- report

def noise_report(clean, noisy, num_classes):
    """Realised noise, JSON-serialisable (plain floats/ints); the caller adds the seed.

    clean, noisy: (N,) int in [0, C), numpy or torch. Returns dict:
      rate      fraction of samples with noisy != clean
      per_class (C,) flip fraction within each clean class (0.0 for an empty class)
      T         (C, C) empirical transition matrix counts[i, j] / n_i (zero row for an empty class)
      n         N
      counts    (C, C) int, counts[i, j] = #{clean = i, noisy = j}
    """
    C = _check_num_classes(num_classes)
    y, z = _labels_to_numpy(clean, C, "clean"), _labels_to_numpy(noisy, C, "noisy")
    if y.shape != z.shape or y.size == 0:
        raise ValueError(f"clean, noisy: expected equal non-empty lengths, got {y.size} and {z.size}")
    counts = np.bincount(y * C + z, minlength=C * C).reshape(C, C)
    n_i = counts.sum(axis=1)
    T = counts / np.maximum(n_i, 1)[:, None]
    per_class = np.where(n_i > 0, 1.0 - np.diag(T), 0.0)
    return {"rate": float(np.mean(y != z)), "per_class": [float(p) for p in per_class],
            "T": T.tolist(), "n": int(y.size), "counts": counts.tolist()}
