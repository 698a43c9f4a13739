"""Properties of noise.py (docs/design.md §5): transition matrices, exact and bernoulli
corruption, instance-dependent noise, CIFAR-N loading and the noise report.

Label sets come from a hypothesis-drawn seed and class sizes, so each example
is a reproducible case, including empty classes and classes of one sample.
"""
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import noise as N
from conftest import save_cifar_n

KINDS = st.sampled_from(["symmetric", "pairflip"])
RATES = st.floats(min_value=0.0, max_value=0.85)
SEEDS = st.integers(0, 2**31 - 1)


def labels_with_sizes(sizes, seed):
    """(sum(sizes),) int64: sizes[i] samples of class i, shuffled."""
    y = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(y)


@st.composite
def labelled(draw, max_classes=12, max_size=60):
    """(labels: (N,) int64, C)."""
    C = draw(st.integers(2, max_classes))
    sizes = draw(st.lists(st.integers(0, max_size), min_size=C, max_size=C))
    return labels_with_sizes(sizes, draw(SEEDS)), C


@st.composite
def random_T(draw, C):
    """(C, C) row-stochastic with exact zeros in some entries."""
    g = np.random.default_rng(draw(SEEDS))
    T = g.random((C, C)) * (g.random((C, C)) < 0.6)
    T[np.arange(C), np.arange(C)] += 0.2
    return T / T.sum(1, keepdims=True)


def quiet_T(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return N.transition_matrix(*args, **kwargs)


def counts_matrix(clean, noisy, C):
    return np.bincount(clean * C + noisy, minlength=C * C).reshape(C, C)


# ----------------------------------------------------------------------------- transition matrices

@given(KINDS, st.integers(2, 30), RATES, st.booleans())
def test_rows_of_T_sum_to_one_and_are_nonnegative(kind, C, r, include_true):
    T = quiet_T(kind, C, r, include_true=include_true and kind == "symmetric")
    assert T.shape == (C, C) and T.dtype == np.float64
    assert (T >= 0).all() and np.allclose(T.sum(1), 1.0, atol=1e-12)


@given(st.integers(2, 30), RATES)
def test_symmetric_excludes_true_class_by_default(C, r):
    T = quiet_T("symmetric", C, r)
    off = T[~np.eye(C, dtype=bool)]
    assert np.allclose(np.diag(T), 1 - r) and np.allclose(off, r / (C - 1))


@given(st.integers(2, 30), RATES)
def test_symmetric_include_true_spreads_rate_over_all_classes(C, r):
    T = N.transition_matrix("symmetric", C, r, include_true=True)
    off = T[~np.eye(C, dtype=bool)]
    assert np.allclose(np.diag(T), 1 - r + r / C) and np.allclose(off, r / C)


@given(st.integers(2, 30), RATES)
def test_pairflip_sends_rate_to_next_class(C, r):
    T = quiet_T("pairflip", C, r)
    expected = np.zeros((C, C))
    for i in range(C):
        expected[i, i] += 1 - r
        expected[i, (i + 1) % C] += r
    assert np.allclose(T, expected)


DOC_MAPS = {  # written out from docs/design.md §5, independently of noise.ASYM_MAPS
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    "mnist": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "digits": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "fashion-mnist": {9: 7, 7: 5, 2: 6, 4: 3, 3: 4},
}


@pytest.mark.parametrize("dataset", sorted(DOC_MAPS))
def test_asymmetric_maps_are_those_of_the_spec(dataset):
    r = 0.3
    expected = np.eye(10)
    for src, dst in DOC_MAPS[dataset].items():
        expected[src, src], expected[src, dst] = 1 - r, r
    assert N.ASYM_MAPS[dataset] == DOC_MAPS[dataset]
    assert np.array_equal(N.transition_matrix("asymmetric", 10, r, dataset=dataset), expected)


def test_cifar100_asymmetric_flips_to_next_class_in_block_of_five():
    T = N.transition_matrix("asymmetric", 100, 0.4, dataset="cifar100")
    for i in range(100):
        nxt = 5 * (i // 5) + (i + 1) % 5
        assert T[i, i] == pytest.approx(0.6) and T[i, nxt] == pytest.approx(0.4)
    assert T[4, 0] == pytest.approx(0.4) and T[99, 95] == pytest.approx(0.4)


@pytest.mark.parametrize("alias, name, C", [("cifar10n", "cifar10", 10), ("CIFAR100N", "cifar100", 100),
                                            ("fashion_mnist", "fashion-mnist", 10)])
def test_dataset_aliases_give_the_same_map(alias, name, C):
    assert N.normalise_dataset(alias) == name
    assert np.array_equal(N.transition_matrix("asymmetric", C, 0.2, dataset=alias),
                          N.transition_matrix("asymmetric", C, 0.2, dataset=name))


@given(st.floats(0.0, 0.75))
def test_superclass_noise_stays_within_superclass_uniformly(r):
    f2c = np.random.default_rng(0).permutation(np.repeat(np.arange(20), 5))
    T = N.superclass_transition_matrix(f2c, r)
    same = f2c[:, None] == f2c[None, :]
    assert np.allclose(T.sum(1), 1.0) and (T[~same] == 0).all()
    assert np.allclose(np.diag(T), 1 - r)
    assert np.allclose(T[same & ~np.eye(100, dtype=bool)], r / 4)


# ----------------------------------------------------------------------------- exact corruption

@given(labelled(), st.floats(0.0, 0.85), SEEDS)
def test_exact_symmetric_flips_round_rate_times_class_size(case, r, seed):
    y, C = case
    z = N.corrupt_labels(y, quiet_T("symmetric", C, r), seed)
    for i in range(C):
        n_i, flipped = (y == i).sum(), ((y == i) & (z != i)).sum()
        assert abs(flipped - r * n_i) <= 0.5 + 1e-9


@given(labelled(), st.floats(0.0, 0.85), SEEDS)
def test_exact_symmetric_counts_per_target_differ_by_at_most_one(case, r, seed):
    y, C = case
    cnt = counts_matrix(y, N.corrupt_labels(y, quiet_T("symmetric", C, r), seed), C)
    for i in range(C):
        off = np.delete(cnt[i], i)
        assert off.max() - off.min() <= 1


@given(st.data(), labelled(), SEEDS)
def test_exact_counts_are_within_one_of_T_times_class_size(data, case, seed):
    y, C = case
    T = data.draw(random_T(C))
    cnt = counts_matrix(y, N.corrupt_labels(y, T, seed), C)
    n_i = np.bincount(y, minlength=C)
    assert np.array_equal(cnt.sum(1), n_i)
    assert (np.abs(cnt - T * n_i[:, None]) < 1 + 1e-9).all()
    assert (cnt[T == 0] == 0).all()


@st.composite
def decimal_rates(draw, max_rate=0.85):
    """A rate written with 1-4 decimals (0.015, 0.45, ...) as a float."""
    d = draw(st.integers(1, 4))
    return float(Fraction(draw(st.integers(0, int(max_rate * 10**d))), 10**d))


def flips_per_class(y, z, C):
    return [int(((y == i) & (z != i)).sum()) for i in range(C)]


@given(st.integers(2, 30), st.integers(0, 200), decimal_rates(), st.booleans(), SEEDS)
def test_exact_symmetric_equal_classes_flip_the_documented_rounding(C, n, r, include_true, seed):
    # docs/design.md §5: round((1 - T_ii) n_i), half to even, computed here in exact
    # rationals from the rate as written; 1 - T_ii = r, or r (C-1)/C with the true class
    y = labels_with_sizes([n] * C, seed)
    z = N.corrupt_labels(y, quiet_T("symmetric", C, r, include_true=include_true), seed)
    flip_rate = Fraction(str(r)) * (Fraction(C - 1, C) if include_true else 1)
    assert flips_per_class(y, z, C) == [round(flip_rate * n)] * C  # Fraction rounds half to even


@given(st.integers(2, 30), st.integers(1, 200), st.data(), SEEDS)
def test_exact_symmetric_rate_h_over_2n_flips_h_over_2_rounded_in_every_class(C, n, data, seed):
    # r = h / (2n) as a float is not a short decimal, but (1 - T_ii) n is h/2 up to
    # float fuzz: every class flips round(h/2), half to even, whatever the fuzz
    h = data.draw(st.integers(0, int(0.85 * 2 * n)))
    y = labels_with_sizes([n] * C, seed)
    z = N.corrupt_labels(y, quiet_T("symmetric", C, h / (2 * n)), seed)
    assert flips_per_class(y, z, C) == [round(Fraction(h, 2))] * C


@pytest.mark.parametrize("C, r, include_true, n, want", [
    (3, 0.015, False, 100, 2),    # 1.5 -> 2; float fuzz once gave [1, 1, 2]
    (10, 0.45, False, 10, 4),     # 4.5 -> 4; float fuzz once gave [5 x8, 4, 4]
    (6, 0.5, True, 6, 2),         # 5/12 * 6 = 2.5 -> 2: not a terminating decimal
])
def test_exact_flip_count_rounds_exact_halves_to_even(C, r, include_true, n, want):
    y = labels_with_sizes([n] * C, 0)
    z = N.corrupt_labels(y, quiet_T("symmetric", C, r, include_true=include_true), 0)
    assert flips_per_class(y, z, C) == [want] * C


@given(st.data(), labelled(), SEEDS)
def test_exact_flips_total_the_rounded_rate_and_each_target_gets_floor_or_ceil(data, case, seed):
    y, C = case
    T = data.draw(random_T(C))
    cnt = counts_matrix(y, N.corrupt_labels(y, T, seed), C)
    for i, n in enumerate(np.bincount(y, minlength=C)):
        off, expected = np.delete(cnt[i], i), np.delete(T[i], i) * n
        assert off.sum() == round((1 - T[i, i]) * n)
        assert ((off == np.floor(expected)) | (off == np.floor(expected) + 1)).all()


def test_exact_flips_are_spread_by_largest_remainder_not_rounded_per_target():
    # 10 classes, r = 0.4, n = 7: 2.8 -> 3 flips; each target's 0.31 rounds to 0,
    # yet three targets get 1 (docs/design.md §5)
    y = labels_with_sizes([7] * 10, 0)
    cnt = counts_matrix(y, N.corrupt_labels(y, quiet_T("symmetric", 10, 0.4), 0), 10)
    for i in range(10):
        assert sorted(np.delete(cnt[i], i)) == [0] * 6 + [1] * 3


@given(st.floats(0.05, 0.49), SEEDS)
def test_swapped_pair_is_flipped_once_not_back(r, seed):
    # CIFAR-10 maps cat->dog and dog->cat: a sequential loop flips new dogs back to cats.
    y = labels_with_sizes([37] * 10, seed)
    z = N.corrupt_labels(y, N.transition_matrix("asymmetric", 10, r, dataset="cifar10"), seed)
    for src, dst in [(3, 5), (5, 3)]:
        assert ((y == src) & (z == dst)).sum() == round(r * 37)
        assert ((y == src) & (z != src) & (z != dst)).sum() == 0


@given(labelled(), SEEDS, st.sampled_from(["exact", "bernoulli"]))
def test_corruption_is_deterministic_per_seed(case, seed, sampling):
    y, C = case
    T = quiet_T("symmetric", C, 0.5)
    assert np.array_equal(N.corrupt_labels(y, T, seed, sampling), N.corrupt_labels(y, T, seed, sampling))


@pytest.mark.parametrize("sampling", ["exact", "bernoulli"])
def test_different_seeds_give_different_noise(sampling):
    y = labels_with_sizes([200] * 10, 0)
    T = N.transition_matrix("symmetric", 10, 0.4)
    assert not np.array_equal(N.corrupt_labels(y, T, 1, sampling), N.corrupt_labels(y, T, 2, sampling))


@pytest.mark.parametrize("make", [lambda y: y.astype(np.int32), lambda y: torch.from_numpy(y),
                                  lambda y: torch.from_numpy(y).to(torch.int16)])
def test_output_has_the_type_of_the_input_and_input_is_untouched(make):
    y = labels_with_sizes([30] * 5, 0)
    labels = make(y)
    z = N.corrupt_labels(labels, N.transition_matrix("symmetric", 5, 0.4), 0)
    assert type(z) is type(labels) and z.dtype == labels.dtype
    assert np.array_equal(np.asarray(labels), y)
    if isinstance(labels, torch.Tensor):
        assert z.device == labels.device


def test_torch_and_numpy_labels_get_the_same_noise():
    y = labels_with_sizes([40] * 6, 3)
    T = N.transition_matrix("pairflip", 6, 0.3)
    assert np.array_equal(N.corrupt_labels(torch.from_numpy(y), T, 5).numpy(), N.corrupt_labels(y, T, 5))


@settings(max_examples=20)
@given(st.floats(0.05, 0.8), SEEDS)
def test_bernoulli_rate_is_within_four_sigma_of_binomial(r, seed):
    y = labels_with_sizes([300] * 10, seed)
    z = N.corrupt_labels(y, N.transition_matrix("symmetric", 10, r), seed, sampling="bernoulli")
    n = y.size
    assert abs((z != y).sum() - r * n) <= 4 * math.sqrt(n * r * (1 - r))


@given(st.data(), labelled(), SEEDS)
def test_bernoulli_never_draws_a_zero_probability_label(data, case, seed):
    y, C = case
    T = data.draw(random_T(C))
    z = N.corrupt_labels(y, T, seed, sampling="bernoulli")
    assert (T[y, z] > 0).all()


# ----------------------------------------------------------------------------- instance-dependent noise

def idn_inputs(n=5000, d=64, C=10, seed=0):
    g = np.random.default_rng(seed)
    return g.random((n, d)), g.integers(0, C, n)


def truncnorm_mean(mu, sigma):
    """Mean of N(mu, sigma^2) truncated to [0, 1]."""
    phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    Phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))
    a, b = (0 - mu) / sigma, (1 - mu) / sigma
    return mu + sigma * (phi(a) - phi(b)) / (Phi(b) - Phi(a))


@pytest.mark.parametrize("r", [0.2, 0.4])
def test_idn_realised_rate_is_close_to_r(r):
    x, y = idn_inputs()
    z = N.instance_dependent(x, y, r, 10, seed=0)
    m = truncnorm_mean(r, N.IDN_STD)
    sigma = math.sqrt(m * (1 - m) / y.size)
    assert abs((z != y).mean() - r) < 0.02
    assert abs((z != y).mean() - m) < 4 * sigma


def test_idn_flips_every_sample_whose_rate_is_one():
    x, y = idn_inputs(n=2000)
    q = np.where(np.arange(y.size) % 2 == 0, 1.0, 0.3)
    P = N._idn_probabilities(x, y, q, 10, np.random.default_rng(0))
    z = N._sample_categorical(P, np.random.default_rng(1))
    assert (z[q == 1.0] != y[q == 1.0]).all()


@given(SEEDS, st.floats(0.0, 1.0))
def test_idn_probabilities_keep_one_minus_q_on_the_true_class(seed, q0):
    x, y = idn_inputs(n=50, d=8, C=4, seed=seed)
    q = np.full(y.size, q0)
    P = N._idn_probabilities(x, y, q, 4, np.random.default_rng(seed))
    assert np.allclose(P.sum(1), 1.0) and (P >= 0).all()
    assert np.allclose(P[np.arange(y.size), y], 1 - q0)


@settings(max_examples=10)
@given(SEEDS, st.floats(0.0, 0.9))
def test_idn_is_deterministic_per_seed(seed, r):
    x, y = idn_inputs(n=300, d=16)
    assert np.array_equal(N.instance_dependent(x, y, r, 10, seed), N.instance_dependent(x, y, r, 10, seed))


def test_idn_different_seeds_differ():
    x, y = idn_inputs(n=1000, d=16)
    assert not np.array_equal(N.instance_dependent(x, y, 0.4, 10, 1), N.instance_dependent(x, y, 0.4, 10, 2))


def test_idn_uint8_images_and_their_unit_scaled_floats_give_the_same_noise():
    g = np.random.default_rng(0)
    x8 = g.integers(0, 256, (500, 3, 4, 4), dtype=np.uint8)
    y = torch.from_numpy(g.integers(0, 10, 500))
    z8 = N.instance_dependent(torch.from_numpy(x8), y, 0.4, 10, seed=3)
    zf = N.instance_dependent(x8.astype(np.float32) / 255, y, 0.4, 10, seed=3)
    assert isinstance(z8, torch.Tensor) and torch.equal(z8, zf)


def test_idn_rate_zero_keeps_clean_labels():
    x, y = idn_inputs(n=500)
    assert np.array_equal(N.instance_dependent(x, y, 0.0, 10, seed=0), y)


@given(st.floats(0.0, 0.95), SEEDS)
def test_truncated_normal_stays_in_bounds_with_the_right_mean(mu, seed):
    q = N._truncated_normal(mu, 0.1, 0.0, 1.0, 20000, np.random.default_rng(seed))
    assert q.min() >= 0.0 and q.max() <= 1.0
    assert abs(q.mean() - truncnorm_mean(mu, 0.1)) < 5 * 0.1 / math.sqrt(q.size)


# ----------------------------------------------------------------------------- report

@given(labelled(), SEEDS)
def test_report_rate_equals_mismatch_fraction(case, seed):
    y, C = case
    if y.size == 0:
        return
    z = np.random.default_rng(seed).integers(0, C, y.size)
    rep = N.noise_report(y, z, C)
    assert rep["rate"] == pytest.approx(np.mean(y != z)) and rep["n"] == y.size
    assert json.loads(json.dumps(rep)) == rep


@given(st.data(), labelled(), SEEDS)
def test_report_T_of_exact_corruption_equals_T_up_to_rounding(data, case, seed):
    y, C = case
    if y.size == 0:
        return
    T = data.draw(random_T(C))
    rep = N.noise_report(torch.from_numpy(y), N.corrupt_labels(torch.from_numpy(y), T, seed), C)
    n_i = np.bincount(y, minlength=C)
    T_emp = np.array(rep["T"])
    for i in np.flatnonzero(n_i):
        assert (np.abs(T_emp[i] - T[i]) < 1 / n_i[i] + 1e-12).all()
        assert rep["per_class"][i] == pytest.approx(1 - T_emp[i, i])


def test_report_counts_and_empty_class():
    rep = N.noise_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert rep["counts"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert rep["per_class"] == [0.5, 0.0, 0.0] and rep["T"][2] == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- CIFAR-N

def cifar10n_arrays(seed=0):
    g = np.random.default_rng(seed)
    keys = ["aggre_label", "worse_label", "random_label1", "random_label2", "random_label3", "clean_label"]
    return {k: g.integers(0, 10, N.CIFAR_N_LENGTH) for k in keys}


@pytest.mark.parametrize("which", ["aggre", "worst", "rand1", "rand2", "rand3", "clean"])
def test_cifar10n_loader_reads_each_label_set(tmp_path, which):
    arrays = cifar10n_arrays()
    save_cifar_n(tmp_path / "CIFAR-10_human.pt", arrays)
    got = N.load_cifar_n(tmp_path / "CIFAR-10_human.pt", which, 10)
    assert got.dtype == np.int64 and np.array_equal(got, arrays[N.CIFAR_N_KEYS[10][which]])


def test_cifar100n_loader_reads_noisy_labels(tmp_path):
    g = np.random.default_rng(1)
    arrays = {"noisy_label": g.integers(0, 100, 50000).astype(np.int32), "clean_label": g.integers(0, 100, 50000)}
    save_cifar_n(tmp_path / "CIFAR-100_human.pt", arrays)
    assert np.array_equal(N.load_cifar_n(tmp_path / "CIFAR-100_human.pt", "noisy100", 100), arrays["noisy_label"])


def test_cifar_n_loader_reads_files_pickled_under_numpy1_names(tmp_path):
    # The published files predate numpy 2: their pickles name numpy.core.multiarray.
    arrays = cifar10n_arrays()
    torch.save(arrays, tmp_path / "new.pt", _use_new_zipfile_serialization=False)
    raw = (tmp_path / "new.pt").read_bytes()
    assert b"numpy._core" in raw
    (tmp_path / "old.pt").write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    assert np.array_equal(N.load_cifar_n(tmp_path / "old.pt", "worst", 10), arrays["worse_label"])


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_cifar_n_loader_refuses_pickles_that_run_code(tmp_path, capsys):
    torch.save({"aggre_label": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        N.load_cifar_n(tmp_path / "evil.pt", "aggre", 10)
    assert "ran code" not in capsys.readouterr().out


@pytest.mark.parametrize("arrays, which, match", [
    ({"aggre_label": np.zeros(49999, dtype=np.int64)}, "aggre", r"shape \(49999,\)"),
    ({"aggre_label": np.zeros(50000, dtype=np.int64)}, "worst", "no key 'worse_label'"),
    ({"aggre_label": np.full(50000, 10)}, "aggre", r"\[0, 10\)"),
    ({"aggre_label": np.zeros(50000)}, "aggre", "integer"),
])
def test_cifar_n_loader_rejects_malformed_files(tmp_path, arrays, which, match):
    save_cifar_n(tmp_path / "bad.pt", arrays)
    with pytest.raises(ValueError, match=match):
        N.load_cifar_n(tmp_path / "bad.pt", which, 10)


def test_cifar_n_loader_rejects_missing_file_unknown_names_and_garbage(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        N.load_cifar_n(tmp_path / "nope.pt", "aggre", 10)
    with pytest.raises(ValueError, match="which: expected one of aggre"):
        N.load_cifar_n(tmp_path / "nope.pt", "noisy100", 10)
    with pytest.raises(ValueError, match="10 or 100"):
        N.load_cifar_n(tmp_path / "nope.pt", "aggre", 7)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights-only"):
        N.load_cifar_n(tmp_path / "garbage.pt", "aggre", 10)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.2", True])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(ValueError, match=r"rate: expected a number in \[0, 1\)"):
        N.transition_matrix("symmetric", 10, rate)
    x, y = idn_inputs(n=20)
    with pytest.raises(ValueError, match="rate"):
        N.instance_dependent(x, y, rate, 10, 0)


def test_asymmetric_without_a_map_lists_supported_datasets():
    for dataset in [None, "svhn"]:
        with pytest.raises(ValueError, match="supported: cifar10, mnist, digits, fashion-mnist, cifar100"):
            N.transition_matrix("asymmetric", 10, 0.2, dataset=dataset)
    with pytest.raises(ValueError, match="num_classes"):
        N.transition_matrix("asymmetric", 100, 0.2, dataset="cifar10")


def test_unknown_kind_sampling_and_misused_flags_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        N.transition_matrix("cifar100-superclass", 100, 0.2)
    with pytest.raises(ValueError, match="include_true"):
        N.transition_matrix("pairflip", 10, 0.2, include_true=True)
    with pytest.raises(ValueError, match="sampling"):
        N.corrupt_labels(np.zeros(3, dtype=np.int64), np.eye(2), 0, sampling="uniform")
    with pytest.raises(ValueError, match="single fine class"):
        N.superclass_transition_matrix(np.array([0, 0, 1]), 0.2)


@pytest.mark.parametrize("labels", [np.array([0, 1, 10]), np.array([-1, 0]), torch.tensor([0, 12]),
                                    np.array([0.0, 1.0]), np.zeros((2, 2), dtype=np.int64)])
def test_bad_labels_are_rejected(labels):
    with pytest.raises(ValueError, match="labels"):
        N.corrupt_labels(labels, N.transition_matrix("symmetric", 10, 0.2), 0)
    with pytest.raises(ValueError, match="labels"):
        N.instance_dependent(np.zeros((len(labels), 3)), labels, 0.2, 10, 0)


def test_bad_T_seed_and_x_are_rejected():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="row-stochastic"):
        N.corrupt_labels(y, np.array([[0.5, 0.4], [0.0, 1.0]]), 0)
    with pytest.raises(ValueError, match="square"):
        N.corrupt_labels(y, np.ones((2, 3)) / 3, 0)
    with pytest.raises(ValueError, match="seed"):
        N.corrupt_labels(y, np.eye(2), -1)
    with pytest.raises(ValueError, match="x: expected"):
        N.instance_dependent(np.zeros((2, 4)), y, 0.2, 2, 0)
    with pytest.raises(ValueError, match="non-finite"):
        N.instance_dependent(np.full((3, 4), np.nan), y, 0.2, 2, 0)
    with pytest.raises(ValueError, match="equal non-empty lengths"):
        N.noise_report(y, y[:2], 2)


def test_symmetric_rate_making_true_class_a_minority_warns():
    with pytest.warns(UserWarning, match="minority"):
        T = N.transition_matrix("symmetric", 10, 0.9)
    assert np.allclose(np.diag(T), 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        N.transition_matrix("symmetric", 10, 0.89)
        N.transition_matrix("symmetric", 10, 0.95, include_true=True)


def test_which_samples_flip_does_not_depend_on_their_position_in_the_class():
    """Exact corruption flips exactly round(r·n_i) samples of class i, chosen at random: the
    first and second half of every class flip about the same share (4 standard deviations of
    the hypergeometric spread), and another seed flips other samples. Without the shuffle the
    count is still exact, so only this catches it (found by mutation testing)."""
    y = np.repeat(np.arange(10), 100)
    T = N.transition_matrix("symmetric", 10, 0.4)
    flipped = np.asarray(N.corrupt_labels(y, T, 0)) != y
    halves = flipped.reshape(10, 2, 50).mean(axis=2)
    assert np.all(np.abs(halves - 0.4) <= 0.2), halves
    other = np.asarray(N.corrupt_labels(y, T, 1)) != y
    assert flipped.sum() == other.sum() == 400 and (flipped != other).sum() > 100
