"""Properties of kan.py (docs/design.md §3): B-spline bases, the one-matmul KAN forward,
the DCM mask on coefficients, and literal == fast DKAN edge scores."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kan
from conftest import check_dkan_autocast_matches_float32, record_value_reads

DTYPES = st.sampled_from([torch.float32, torch.float64])


def _grid(d_in, grid_size, order, lo=-1.0, hi=1.0, dtype=torch.float64):
    return kan.kan_init(d_in, 1, grid_size, order, (lo, hi), dtype=dtype)["grid"]


def _params(d_in, d_out, grid_size=5, order=3, seed=0, dtype=torch.float64, spline_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    p = kan.kan_init(d_in, d_out, grid_size, order, generator=g, dtype=dtype)
    # Spline weights of the same size as the base weights, so both parts of φ matter.
    p["spline_weight"] = p["spline_weight"] * (10 * spline_scale)
    return p


def _randn(shape, seed, dtype=torch.float64, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def _near_knot(x, grid, tol=1e-9):
    """x: (B, d), grid: (d, K) -> (B, d) bool, x within tol of one of its knots."""
    return ((x.unsqueeze(-1) - grid.unsqueeze(0)).abs() <= tol).any(dim=-1)


orders = st.integers(0, 4)
grid_sizes = st.integers(1, 7)
in_range = st.lists(st.floats(-1.0, 1.0, exclude_max=True), min_size=1, max_size=24)
anywhere = st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=24)


# ----------------------------------------------------------------------------
# B-spline bases
# ----------------------------------------------------------------------------

@given(orders, grid_sizes, in_range)
def test_bases_sum_to_one_inside_grid_range(order, grid_size, xs):
    x = torch.tensor(xs, dtype=torch.float64).unsqueeze(1)
    grid = _grid(1, grid_size, order)
    for basis in (kan.bspline_basis, kan.bspline_basis_uniform):
        total = basis(x, grid, order).sum(dim=-1)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)


@given(orders, grid_sizes, anywhere)
def test_bases_are_non_negative(order, grid_size, xs):
    x = torch.tensor(xs, dtype=torch.float64).unsqueeze(1)
    grid = _grid(1, grid_size, order)
    for basis in (kan.bspline_basis, kan.bspline_basis_uniform):
        assert (basis(x, grid, order) >= 0).all()


@given(orders, grid_sizes, anywhere)
def test_at_most_order_plus_one_bases_are_nonzero(order, grid_size, xs):
    x = torch.tensor(xs, dtype=torch.float64).unsqueeze(1)
    grid = _grid(1, grid_size, order)
    for basis in (kan.bspline_basis, kan.bspline_basis_uniform):
        assert ((basis(x, grid, order) != 0).sum(dim=-1) <= order + 1).all()


@given(orders, grid_sizes, in_range)
def test_exactly_order_plus_one_bases_are_nonzero_off_the_knots(order, grid_size, xs):
    """At distance d from a knot the smallest non-zero basis is about (d/h)^p / p!; the closed
    form evaluates expanded polynomials with ~1e-16 absolute error, so "off the knots" means
    d > 1e-3 here (smallest basis >= ~1e-12), not the 1e-9 of the exact Cox–de Boor values
    (found by the thorough profile: x = 1 - 6e-8, order 3, gave 3 non-zero closed-form bases)."""
    x = torch.tensor(xs, dtype=torch.float64).unsqueeze(1)
    grid = _grid(1, grid_size, order)
    off = ~_near_knot(x, grid, tol=1e-3).squeeze(1)
    for basis in (kan.bspline_basis, kan.bspline_basis_uniform):
        count = (basis(x, grid, order) != 0).sum(dim=-1).squeeze(1)
        assert (count[off] == order + 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bases_vanish_outside_the_extended_grid(dtype):
    grid = _grid(1, 5, 3, dtype=dtype)
    below = torch.nextafter(grid[0, 0], torch.tensor(-float("inf"), dtype=dtype)).item()
    x = torch.tensor([[-1e30], [-100.0], [below], [grid[0, -1].item()], [7.0], [1e30]], dtype=dtype)
    for basis in (kan.bspline_basis, kan.bspline_basis_uniform):
        assert (basis(x, grid, 3) == 0).all()
    assert (kan.bspline_basis_uniform(torch.tensor([[-float("inf")], [float("inf")]], dtype=dtype), grid, 3) == 0).all()


@given(orders, grid_sizes, anywhere, st.floats(-50, 50), st.floats(0.01, 100), DTYPES)
def test_closed_form_equals_cox_de_boor(order, grid_size, xs, lo, width, dtype):
    grid = _grid(1, grid_size, order, lo, lo + width, dtype)
    # Rescale the drawn points onto this grid, and add every knot itself.
    x = (torch.tensor(xs, dtype=torch.float64) * width / 2 + lo + width / 2).to(dtype)
    x = torch.cat([x, grid[0]]).unsqueeze(1)
    closed, cox = kan.bspline_basis_uniform(x, grid, order), kan.bspline_basis(x, grid, order)
    # Knots stored in `dtype` are uniform only up to rounding, relative to their magnitude.
    conditioning = grid.abs().max().item() / (width / grid_size)
    atol = 50 * torch.finfo(dtype).eps * max(conditioning, 1.0)
    torch.testing.assert_close(closed, cox, rtol=0, atol=atol)
    assert torch.equal(closed != 0, cox != 0) or order > 0   # order 0: the same half-open cells


@given(st.integers(1, 4), grid_sizes, st.integers(0, 2**31 - 1))
def test_closed_form_gradient_equals_cox_de_boor_gradient(order, grid_size, seed):
    grid = _grid(3, grid_size, order)
    x = _randn((16, 3), seed, scale=1.3)
    w = _randn((16, 3, grid_size + order), seed + 1)   # a random upstream gradient
    grads = []
    for basis in (kan.bspline_basis_uniform, kan.bspline_basis):
        xr = x.clone().requires_grad_()
        (basis(xr, grid, order) * w).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_closed_form_backward_passes_gradcheck(order):
    grid = _grid(4, 5, order)
    x = _randn((6, 4), order, scale=1.2)
    x = x[~_near_knot(x, grid, 1e-4).any(dim=1)].requires_grad_()   # kinks for order 1
    assert torch.autograd.gradcheck(lambda t: kan.bspline_basis_uniform(t, grid, order), (x,))
    params = _params(4, 2, 5, order)
    assert torch.autograd.gradcheck(lambda t: kan.kan_features(params, t), (x,))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_closed_form_double_backward_passes_gradgradcheck(order):
    """Second derivatives (e.g. a gradient penalty) through the closed form are right:
    order >= 2 so that the first derivative is continuous and finite differences apply."""
    grid = _grid(3, 5, order)
    x = _randn((5, 3), order + 10, scale=1.2)
    x = x[~_near_knot(x, grid, 1e-3).any(dim=1)].requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: kan.bspline_basis_uniform(t, grid, order), (x,))
    params = _params(3, 2, 5, order)
    assert torch.autograd.gradgradcheck(lambda t: kan.kan_features(params, t), (x,))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_closed_form_second_derivative_equals_cox_de_boor(order):
    """d²/dx² of Σ_g c_g B_g(x) through both bases' autograd graphs."""
    grid = _grid(4, 5, order)
    x = _randn((7, 4), order + 20, scale=1.2)
    x = x[~_near_knot(x, grid, 1e-6).any(dim=1)]
    c = _randn((grid.shape[1] - 1 - order,), 3)

    def second(basis):
        t = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((basis(t, grid, order) * c).sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), t)
        return gg
    torch.testing.assert_close(second(kan.bspline_basis_uniform), second(kan.bspline_basis), rtol=1e-9, atol=1e-9)


def test_cox_de_boor_handles_a_non_uniform_grid():
    knots = torch.tensor([-3.0, -2.5, -1.0, -0.7, 0.0, 0.1, 0.9, 2.0, 3.5, 4.0], dtype=torch.float64)
    x = torch.linspace(-0.7, 0.899, 50, dtype=torch.float64).unsqueeze(1)   # [t_3, t_{K-4})
    b = kan.bspline_basis(x, knots.unsqueeze(0), 3)
    torch.testing.assert_close(b.sum(dim=-1), torch.ones(50, 1, dtype=torch.float64))


def test_closed_form_rejects_a_non_uniform_grid():
    grid = _grid(2, 5, 3)
    grid[1, 4] += 0.05
    with pytest.raises(ValueError, match="grid"):
        kan.bspline_basis_uniform(torch.zeros(3, 2, dtype=torch.float64), grid, 3)
    with pytest.raises(ValueError, match="grid"):
        kan.kan_forward({**_params(2, 3), "grid": grid}, torch.zeros(3, 2, dtype=torch.float64))


# ----------------------------------------------------------------------------
# KAN forward, mask, gradients
# ----------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 5))   # B, d_in, d_out


@given(shapes, st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_kan_forward_equals_sum_of_edge_activations(shape, order, seed):
    b, d_in, d_out = shape
    params = _params(d_in, d_out, 4, order, seed)
    x = _randn((b, d_in), seed, scale=1.5)
    expected = kan.kan_edge_activations(params, x).sum(dim=-1)
    for basis in ("closed", "cox"):
        torch.testing.assert_close(kan.kan_forward(params, x, basis=basis), expected)


@given(shapes, st.integers(0, 2**31 - 1))
def test_masked_forward_equals_masked_sum_of_edge_activations(shape, seed):
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed)
    v = _randn((b, d_in), seed, scale=3.0)
    mask = (torch.rand(d_out, d_in, generator=torch.Generator().manual_seed(seed)) < 0.5).double()
    x = kan.layer_norm(v)
    expected = (kan.kan_edge_activations(params, x) * mask).sum(dim=-1)
    torch.testing.assert_close(kan.kan_forward(params, x, mask), expected)
    torch.testing.assert_close(kan.dkan_forward(params, v, mask), expected)


@given(shapes, st.integers(0, 2**31 - 1))
def test_mask_of_ones_equals_no_mask(shape, seed):
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed, dtype=torch.float32)
    v = _randn((b, d_in), seed, torch.float32)
    ones = torch.ones(d_out, d_in)
    assert torch.equal(kan.dkan_forward(params, v, ones), kan.dkan_forward(params, v))


@given(shapes, st.integers(0, 2**31 - 1))
def test_masked_coefficients_get_exactly_zero_gradient(shape, seed):
    b, d_in, d_out = shape
    params = {k: t.requires_grad_(k != "grid") for k, t in _params(d_in, d_out, seed=seed).items()}
    v = _randn((b, d_in), seed, scale=2.0)
    mask = (torch.rand(d_out, d_in, generator=torch.Generator().manual_seed(seed)) < 0.5).double()
    kan.dkan_forward(params, v, mask).pow(2).sum().backward()
    off = mask == 0
    assert (params["base_weight"].grad[off] == 0).all()
    assert (params["spline_weight"].grad[off] == 0).all()


def test_closed_and_cox_kan_have_equal_parameter_gradients():
    params = _params(6, 4, seed=3)
    x = _randn((10, 6), 3, scale=1.2)
    grads = []
    for basis in ("closed", "cox"):
        p = {k: t.clone().requires_grad_(k != "grid") for k, t in params.items()}
        xr = x.clone().requires_grad_()
        kan.kan_forward(p, xr, basis=basis).sin().sum().backward()
        grads.append((xr.grad, p["base_weight"].grad, p["spline_weight"].grad))
    for closed, cox in zip(*grads):
        torch.testing.assert_close(closed, cox)


def test_forward_is_one_matmul_over_features():
    params = _params(5, 3, seed=1)
    x = _randn((4, 5), 1)
    phi = kan.kan_features(params, x)
    assert phi.shape == (4, 5, 1 + 8)
    torch.testing.assert_close(phi[..., 0], torch.nn.functional.silu(x))
    coef = kan.kan_coefficients(params)
    assert torch.equal(kan.kan_forward(params, x), phi.flatten(1) @ coef.flatten(1).T)


# ----------------------------------------------------------------------------
# DKAN edge scores: literal == fast, moments
# ----------------------------------------------------------------------------

inputs = st.sampled_from(["normal", "beyond_range", "large", "constant"])


def _inputs(kind, b, d_in, seed, dtype):
    if kind == "constant":
        return _randn((1, d_in), seed, dtype).expand(b, d_in).clone()
    scale = {"normal": 1.0, "beyond_range": 4.0, "large": 1e3}[kind]
    return _randn((b, d_in), seed, dtype, scale)


@given(shapes, inputs, DTYPES, st.integers(0, 2**31 - 1))
def test_fast_scores_equal_literal_scores(shape, kind, dtype, seed):
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed, dtype=dtype)
    x = _inputs(kind, b, d_in, seed, dtype)
    literal, fast = kan.kan_edge_scores_literal(params, x), kan.kan_edge_scores(params, x)
    assert fast.dtype == dtype and fast.shape == (d_out, d_in)
    scale = kan.kan_edge_activations(params, x).abs().amax().item() + 1e-30
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast, literal, rtol=10 * tol, atol=tol * scale)


@given(shapes, st.integers(0, 2**31 - 1))
def test_single_sample_gives_zero_scores(shape, seed):
    _, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed)
    x = _randn((1, d_in), seed)
    assert (kan.kan_edge_scores(params, x) == 0).all()
    assert (kan.kan_edge_scores_literal(params, x) == 0).all()


@given(shapes, DTYPES, st.integers(0, 2**31 - 1))
def test_constant_features_give_exactly_zero_fast_scores(shape, dtype, seed):
    """Centred first: a batch of identical feature rows has covariance exactly 0."""
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed, dtype=dtype)
    phi = kan.kan_features(params, _inputs("constant", 1, d_in, seed, dtype)).expand(b, -1, -1)
    assert (kan._scores_from_features(params, phi) == 0).all()


@given(shapes, DTYPES, st.integers(0, 2**31 - 1))
def test_constant_inputs_give_zero_fast_scores_up_to_rounding(shape, dtype, seed):
    """Identical inputs give features equal up to the last bit (the closed form's matmul may
    round rows differently), so the scores are 0 up to rounding of the features (~eps)."""
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed, dtype=dtype)
    x = _inputs("constant", b, d_in, seed, dtype)
    scale = kan.kan_edge_activations(params, x).abs().amax().item() + 1e-30
    assert float(kan.kan_edge_scores(params, x).abs().max()) <= 100 * torch.finfo(dtype).eps * scale


@given(shapes, st.integers(0, 2**31 - 1), st.data())
def test_merged_moments_of_split_batches_give_whole_batch_scores(shape, seed, data):
    b, d_in, d_out = shape
    b = b + 1
    cut = data.draw(st.integers(1, b - 1))
    params = _params(d_in, d_out, seed=seed)
    x = _randn((b, d_in), seed, scale=2.0)
    phi = kan.kan_features(params, x)
    merged = tuple(u + w for u, w in zip(kan.kan_moments(phi[:cut]), kan.kan_moments(phi[cut:])))
    torch.testing.assert_close(kan.kan_scores_from_moments(merged, params),
                               kan.kan_scores_from_moments(kan.kan_moments(phi), params))
    torch.testing.assert_close(kan.kan_scores_from_moments(merged, params), kan.kan_edge_scores(params, x))


def test_moments_are_float64_and_mergeable_by_elementwise_sum():
    params = _params(3, 2, dtype=torch.float32)
    phi = kan.kan_features(params, _randn((5, 3), 0, torch.float32))
    n, s1, s2 = kan.kan_moments(phi)
    assert n.dim() == 0 and n.item() == 5
    assert (n.dtype, s1.dtype, s2.dtype) == (torch.float64,) * 3
    assert s1.shape == (3, 9) and s2.shape == (3, 9, 9)
    assert kan.kan_scores_from_moments((n, s1, s2), params).dtype == torch.float32


def test_dkan_scores_are_kan_scores_of_the_layer_normed_input():
    params = _params(6, 3, seed=2)
    v = _randn((8, 6), 2, scale=5.0) + 3
    expected = kan.kan_edge_scores_literal(params, kan.layer_norm(v))
    torch.testing.assert_close(kan.dkan_edge_scores(params, v), expected)


def test_layer_norm_gives_zero_mean_unit_variance_rows():
    x = kan.layer_norm(_randn((8, 6), 2, scale=5.0) + 3)
    torch.testing.assert_close(x.mean(dim=-1), torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(x.var(dim=-1, correction=0), torch.ones(8, dtype=torch.float64), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------
# Parameters and bad input
# ----------------------------------------------------------------------------

def test_init_shapes_and_seeded_determinism():
    a = kan.kan_init(7, 3, grid_size=4, order=2, generator=torch.Generator().manual_seed(1))
    b = kan.kan_init(7, 3, grid_size=4, order=2, generator=torch.Generator().manual_seed(1))
    assert a["grid"].shape == (7, 4 + 2 * 2 + 1)
    assert a["base_weight"].shape == (3, 7) and a["spline_weight"].shape == (3, 7, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["base_weight"].abs().max() <= 7 ** -0.5
    torch.testing.assert_close(a["grid"][0, 2:7], torch.linspace(-1, 1, 5))


@pytest.mark.parametrize("call", [
    lambda p: kan.kan_forward(p, torch.zeros(2, 5)),                       # wrong d_in
    lambda p: kan.kan_forward(p, torch.zeros(4)),                          # not (B, d_in)
    lambda p: kan.kan_forward(p, torch.zeros(2, 4), torch.ones(4, 3)),     # mask transposed
    lambda p: kan.kan_forward(p, torch.zeros(2, 4), basis="bezier"),       # unknown basis
    lambda p: kan.kan_forward({**p, "spline_weight": p["spline_weight"][:2]}, torch.zeros(2, 4)),
    lambda p: kan.kan_forward({k: p[k] for k in ("grid", "base_weight")}, torch.zeros(2, 4)),
    lambda p: kan.kan_forward_features(p, torch.zeros(2, 4, 5)),           # wrong feature count
    lambda p: kan.bspline_basis(torch.zeros(2, 4), p["grid"], -1),         # negative order
    lambda p: kan.bspline_basis(torch.zeros(2, 4), p["grid"], 6),          # grid too short for order
    lambda p: kan.bspline_basis(torch.zeros(2, 4), p["grid"].flip(1), 3),  # decreasing knots
    lambda p: kan.kan_scores_from_moments(kan.kan_moments(torch.zeros(2, 4, 5)), p),
    lambda p: kan.kan_edge_scores(p, torch.zeros(0, 4)),                   # empty batch
    lambda p: kan.kan_init(0, 3),
    lambda p: kan.kan_init(4, 3, grid_range=(1.0, -1.0)),
])
def test_bad_input_raises_value_error(call):
    params = kan.kan_init(4, 3)
    with pytest.raises(ValueError):
        call(params)


def test_an_empty_pool_gives_zero_scores_without_reading_the_device(monkeypatch):
    """n = 0 (no sample pooled): scores 0, the convention of dcm_ref.std_from_moments, and no
    read of n (a host sync on CUDA), so a mask update never waits for the GPU."""
    params = kan.kan_init(4, 3)
    m = kan.kan_moments(torch.zeros(0, 4, 9))
    reads = record_value_reads(monkeypatch)
    scores = kan.kan_scores_from_moments(m, params)
    monkeypatch.undo()
    assert reads == [] and scores.shape == (3, 4) and torch.equal(scores, torch.zeros(3, 4))


def test_the_uniform_grid_check_is_remembered_but_redone_after_the_grid_changes():
    """_uniform_spacing checks a grid once (the check reads the device) and again after any
    in-place change: a grid made non-uniform after a first forward is still refused."""
    grid = kan.kan_init(4, 3)["grid"].clone()
    x = torch.rand(5, 4) * 2 - 1
    first = kan.bspline_basis_uniform(x, grid, 3)
    assert torch.equal(kan.bspline_basis_uniform(x, grid, 3), first)   # the remembered check: same result
    grid[:, 4] += 0.05                                                   # in place: not uniform any more
    with pytest.raises(ValueError, match="not uniformly spaced"):
        kan.bspline_basis_uniform(x, grid, 3)
    square = kan.kan_init(12, 3)["grid"]                                 # 12 rows of 12 knots
    kan.bspline_basis_uniform(torch.zeros(5, 12), square, 3)
    with pytest.raises(ValueError, match="not uniformly spaced"):       # same address, shape, version
        kan.bspline_basis_uniform(torch.zeros(5, 12), square.t(), 3)    # but other strides: checked anew
    other = torch.linspace(-2, 2, grid.shape[1]).repeat(4, 1)          # another grid, same shape
    assert torch.allclose(kan.bspline_basis_uniform(x, other, 3), kan.bspline_basis(x, other, 3), atol=1e-6)


def test_closed_form_takes_non_contiguous_inputs():
    """A transposed or strided x (B, d_in) gives the same bases and layer output as its copy."""
    grid = _grid(3, 5, 3)
    x = _randn((3, 40), 1).t()                                # (40, 3), not contiguous
    assert not x.is_contiguous()
    assert torch.equal(kan.bspline_basis_uniform(x, grid, 3), kan.bspline_basis_uniform(x.contiguous(), grid, 3))
    p = _params(3, 2)
    assert torch.equal(kan.kan_forward(p, x), kan.kan_forward(p, x.contiguous()))
    every_other = _randn((40, 6), 2)[:, ::2]
    assert torch.allclose(kan.bspline_basis_uniform(every_other, grid, 3), kan.bspline_basis(every_other, grid, 3), atol=1e-12)


def test_bases_follow_a_grid_changed_through_data():
    """grid.data.copy_ is not versioned by torch: the remembered check is not redone, but the
    knots' start and spacing are read from the live grid, so the bases are the new grid's."""
    grid = _grid(2, 5, 3).clone()
    x = _randn((30, 2), 3, scale=1.5)
    kan.bspline_basis_uniform(x, grid, 3)                    # checked and remembered
    wider = _grid(2, 5, 3, lo=-2.0, hi=2.0)
    grid.data.copy_(wider)
    assert torch.allclose(kan.bspline_basis_uniform(x, grid, 3), kan.bspline_basis(x, wider, 3), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_closed_form_in_half_precision_is_the_rounded_exact_value(dtype):
    """Half-precision x: the bases are the float64 values rounded to the dtype (computed in
    float32, error <= half an ulp of 1), not the expanded polynomials evaluated in 8-11 bits."""
    grid = _grid(4, 5, 3, dtype=torch.float32)
    x = (torch.rand(256, 4, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1).to(dtype)
    exact = kan.bspline_basis(x.double(), grid.double(), 3)
    got = kan.bspline_basis_uniform(x, grid, 3)
    assert got.dtype == dtype
    assert (got.double() - exact).abs().max() <= torch.finfo(dtype).eps / 2 + 1e-6


# ----------------------------------------------------------------------------
# Mixed precision (bf16 autocast) and torch.compile
# ----------------------------------------------------------------------------

def _dkan_step(params, v, mask):
    """The functional DKAN step of training: Φ, moments, scores, masked logits.
    v: (B, d_in), mask: (d_out, d_in) -> logits (B, d_out), scores (d_out, d_in)."""
    phi = kan.dkan_features(params, v)
    scores = kan.kan_scores_from_moments(kan.kan_moments(phi), params)
    return kan.kan_forward_features(params, phi, mask), scores


def _trainable(params):
    return {k: t.detach().clone().requires_grad_(k != "grid") for k, t in params.items()}


@settings(max_examples=20)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_dkan_under_bf16_autocast_computes_the_float32_features(b, d_in, d_out, seed):
    """Under CPU bf16 autocast the bases are computed in float32: Φ, its gradient (backward
    inside the autocast region too), the float64 moments and the scores equal eager float32
    bit for bit; only the logits' matmul runs in bf16 (autocast's choice)."""
    p = _trainable(_params(d_in, d_out, seed=seed, dtype=torch.float32))
    v = _randn((b, d_in), seed + 1, dtype=torch.float32, scale=3.0).requires_grad_(True)
    g = _randn((b, d_in, p["spline_weight"].shape[2] + 1), seed + 2, dtype=torch.float32)
    check_dkan_autocast_matches_float32(p, v, g, "cpu")


@settings(max_examples=20)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_dkan_under_bf16_autocast_with_bf16_input_gives_the_rounded_float32_features(b, d_in, seed):
    """A bf16 backbone output v under CPU autocast: layer_norm gives bf16 x, and Φ is the
    float32 computation on x, rounded to bf16 once at the end (no bf16 arithmetic inside)."""
    p = _trainable(_params(d_in, 3, seed=seed, dtype=torch.float32))
    v = _randn((b, d_in), seed + 1, dtype=torch.float32, scale=3.0).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = kan.layer_norm(v)
        phi = kan.kan_features(p, x)
        y = kan.kan_forward_features(p, phi)
    assert x.dtype == phi.dtype == torch.bfloat16
    assert torch.equal(phi, kan.kan_features(p, x.detach().float()).bfloat16())
    y.float().square().sum().backward()
    assert v.grad.dtype == torch.bfloat16 and v.grad.isfinite().all()


def test_compiled_dkan_step_has_no_graph_break_and_equals_eager():
    """torch.compile(fullgraph=True) of the DKAN step (Φ, moments, scores, masked logits)
    compiles (fullgraph raises at any graph break) and, forward and backward, equals eager up
    to float32 reassociation in inductor's fused kernels: |compiled - eager| <= 2e-5 · max|eager|
    per tensor (measured: <= 2e-6). The mask comes from dcm_ref.topk_mask outside the compiled
    function. Another uniform grid of the same shape goes through the same compiled graph and
    is followed (t0, h are read in the graph, not folded in); eager still refuses a grid made
    non-uniform in place afterwards (the remembered check is redone at a new version)."""
    import dcm_ref
    torch._dynamo.reset()
    p0 = _params(24, 10, seed=3, dtype=torch.float32)
    v0 = _randn((64, 24), 4, dtype=torch.float32, scale=3.0)
    mask = dcm_ref.topk_mask(_dkan_step(p0, v0, None)[1], 0.25)
    compiled = torch.compile(_dkan_step, fullgraph=True)

    def run(fn, params):
        p, v = _trainable(params), v0.clone().requires_grad_(True)
        y, scores = fn(p, v, mask)
        y.square().mean().backward()
        return y, scores, p["base_weight"].grad, p["spline_weight"].grad, v.grad

    wider = dict(p0, grid=_grid(24, 5, 3, lo=-1.5, hi=2.0, dtype=torch.float32))
    for params in (p0, wider):
        for got, want in zip(run(compiled, params), run(_dkan_step, params)):
            assert (got - want).abs().max() <= 2e-5 * want.abs().max()
    grid = p0["grid"].clone()
    kan.dkan_features(dict(p0, grid=grid), v0)                # checked and remembered
    grid[:, 4] += 0.05                                         # in place: no longer uniform
    with pytest.raises(ValueError, match="not uniformly spaced"):
        kan.dkan_features(dict(p0, grid=grid), v0)


def test_piece_tables_are_made_once_per_dtype_and_device(monkeypatch):
    """After a first forward + backward, later steps build no piece table: on CUDA a fresh
    table would be a host-to-device copy, a host sync (docs/design.md §10), at every step."""
    p = _trainable(_params(6, 3, dtype=torch.float32))
    v = _randn((20, 6), 5, dtype=torch.float32)
    kan.dkan_forward(p, v).sum().backward()
    made = []
    monkeypatch.setattr(kan, "_piece_tensor", lambda *a: made.append(a))
    kan.dkan_forward(p, v).sum().backward()
    assert made == []


@given(shapes, st.integers(0, 2**31 - 1))
def test_ablation_scores_are_the_coefficient_norm_and_the_total_basis_std(shape, seed):
    """DKAN's "magnitude" score is ‖c_jk‖₂ (no data); its "feature" score is the std of input k's
    basis vector Φ (sqrt of the trace of its covariance, two-pass here), the same for every class."""
    b, d_in, d_out = shape
    params = _params(d_in, d_out, seed=seed, dtype=torch.float64)
    phi = kan.kan_features(params, _inputs("normal", b, d_in, seed, torch.float64))     # (b, d_in, F)
    coef = kan.kan_coefficients(params)
    assert torch.equal(kan.kan_magnitude_scores(params), coef.norm(dim=-1))
    total_std = phi.var(dim=0, correction=0).sum(dim=-1).sqrt()                      # (d_in,)
    feat = kan.kan_feature_scores(kan.kan_moments(phi), d_out)
    assert feat.shape == (d_out, d_in) and all(torch.equal(row, feat[0]) for row in feat)
    torch.testing.assert_close(feat[0], total_std, rtol=1e-6, atol=1e-9)
