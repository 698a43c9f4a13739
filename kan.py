"""B-spline KAN layer and the DKAN head of DCM (docs/design.md §3), as pure functions.

Implements the KAN head of "Combating Noisy Labels via Dynamic Connection
Masking" (Zhang et al., arXiv 2508.09697): y_j = Σ_k φ_jk(x_k) with
φ_jk(x) = base_weight[j,k]·silu(x) + Σ_g spline_weight[j,k,g]·B_g(x), its edge
importance S[j,k] = std_b φ_jk(x_bk) (the DKAN analogue of Eq. 2), and the
DCM mask applied to each edge's coefficient vector. The forward is ONE matmul
over the per-input features Φ = [silu(x), B_0(x), …, B_{G'-1}(x)] (the efficient-kan
idea; F = 1 + G' features per input, G' = grid_size + order bases); on a uniform grid the
bases come from a closed form with a hand-written backward, and Cox–de Boor stays as the
literal reference. Indices as in dcm_ref.py: j = output (class), k = input.

The functions up to the drop-in modules import torch only (the literal path: kan_init,
bspline_basis, kan_coefficients, kan_edge_activations and their _check_* helpers; the
forward's closed form brings its own block); the usage takes its top-k from dcm_ref.py:

    params = {k: t.requires_grad_(k != "grid") for k, t in kan_init(256, 10).items()}
    mask = dcm_ref.topk_mask(dkan_edge_scores(params, v), keep=0.1)    # v: (B, 256)
    logits = dkan_forward(params, v, mask)                             # (B, 10); at test time mask=None
"""
import contextlib
import math
from fractions import Fraction

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def kan_init(d_in, d_out, grid_size=5, order=3, grid_range=(-1.0, 1.0),
             generator=None, dtype=torch.float32, device=None):
    """Fresh KAN layer parameters (docs/design.md §3) as plain tensors.

    grid: (d_in, grid_size + 2·order + 1) uniform knots over grid_range, extended
        by `order` knots on each side; base_weight: (d_out, d_in) ~ U(±1/√d_in),
        like nn.Linear, so at init the layer is a linear map of silu(x);
        spline_weight: (d_out, d_in, grid_size + order) ~ N(0, (0.1/√d_in)²),
        small so the spline part starts as a perturbation of the base part.
    The caller makes base/spline weights trainable; the grid stays fixed.
    """
    _check_positive_int("d_in", d_in)
    _check_positive_int("d_out", d_out)
    _check_positive_int("grid_size", grid_size)
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"order: got {order!r}, expected an int >= 0")
    lo, hi = (float(v) for v in grid_range)
    if not hi > lo:
        raise ValueError(f"grid_range: got {grid_range!r}, expected (lo, hi) with hi > lo")
    h = (hi - lo) / grid_size
    # float64 then cast, so every row holds the same correctly rounded knots.
    knots = lo + h * torch.arange(-order, grid_size + order + 1, dtype=torch.float64)
    grid = knots.to(dtype=dtype, device=device).repeat(d_in, 1)
    bound = 1.0 / math.sqrt(d_in)
    base = torch.rand(d_out, d_in, generator=generator, dtype=dtype, device=device)
    spline = torch.randn(d_out, d_in, grid_size + order, generator=generator,
                         dtype=dtype, device=device)
    return {"grid": grid, "base_weight": (2 * base - 1) * bound,
            "spline_weight": spline * (0.1 * bound)}


def _check_positive_int(name, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected an int >= 1")


# ----------------------------------------------------------------------------
# B-spline bases: Cox–de Boor (literal; the closed form training uses is the fast-path section below)
# ----------------------------------------------------------------------------

def _check_basis_args(x, grid, order):
    """Shared validation of (x: (B, d_in), grid: (d_in, K), order)."""
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"order: got {order!r}, expected an int >= 0")
    if grid.dim() != 2 or grid.shape[1] < 2 * order + 2:
        raise ValueError(f"grid: got shape {tuple(grid.shape)}, expected "
                         f"(d_in, grid_size + 2·order + 1) with grid_size >= 1, order={order}")
    if x.dim() != 2 or x.shape[1] != grid.shape[0]:
        raise ValueError(f"x: got shape {tuple(x.shape)}, expected (B, {grid.shape[0]})")
    if not x.is_floating_point():
        raise ValueError(f"x: got dtype {x.dtype}, expected a floating dtype")


def bspline_basis(x, grid, order):
    """B-spline bases by the Cox–de Boor recursion, as written (any increasing grid).

    x: (B, d_in), grid: (d_in, K) knots t_0 < … < t_{K-1} per input
    -> (B, d_in, K - 1 - order) = (B, d_in, grid_size + order).
    Order 0 uses half-open intervals [t_i, t_{i+1}), so every basis is 0 at and
    beyond t_{K-1} and below t_0, for finite x (x = ±inf gives NaN: inf·0 in the
    recursion; NaN gives NaN). Differentiable by autograd (w.r.t. x and grid).
    """
    _check_basis_args(x, grid, order)
    if not bool((grid[:, 1:] > grid[:, :-1]).all()):
        raise ValueError("grid: knots are not strictly increasing along each row")
    t = grid.to(x.dtype).unsqueeze(0)                           # (1, d, K)
    xe = x.unsqueeze(-1)                                        # (B, d, 1)
    b = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)   # B_{i,0}: (B, d, K-1)
    for p in range(1, order + 1):
        # B_{i,p} = (x - t_i)/(t_{i+p} - t_i)·B_{i,p-1} + (t_{i+p+1} - x)/(t_{i+p+1} - t_{i+1})·B_{i+1,p-1}
        left = (xe - t[..., :-(p + 1)]) / (t[..., p:-1] - t[..., :-(p + 1)]) * b[..., :-1]
        right = (t[..., p + 1:] - xe) / (t[..., p + 1:] - t[..., 1:-p]) * b[..., 1:]
        b = left + right
    return b


# ----------------------------------------------------------------------------
# KAN layer: features Φ, coefficients c, forward as one matmul
# ----------------------------------------------------------------------------

def _check_params(params):
    """Validate a KAN params dict; -> order (recovered from the shapes: K - G' - 1)."""
    missing = {"grid", "base_weight", "spline_weight"} - set(params)
    if missing:
        raise ValueError(f"params: missing {sorted(missing)}, expected grid, base_weight, spline_weight")
    grid, base, spline = params["grid"], params["base_weight"], params["spline_weight"]
    if grid.dim() != 2 or base.dim() != 2 or spline.dim() != 3:
        raise ValueError(f"params: got grid {tuple(grid.shape)}, base_weight {tuple(base.shape)}, "
                         f"spline_weight {tuple(spline.shape)}, expected (d_in, K), (d_out, d_in), (d_out, d_in, G')")
    order = grid.shape[1] - spline.shape[2] - 1
    if base.shape[1] != grid.shape[0] or spline.shape[:2] != base.shape or order < 0 \
            or spline.shape[2] <= order:
        raise ValueError(f"params: got grid {tuple(grid.shape)}, base_weight {tuple(base.shape)}, "
                         f"spline_weight {tuple(spline.shape)}, expected (d_in, G+2p+1), "
                         f"(d_out, d_in), (d_out, d_in, G+p) with G >= 1, p >= 0")
    return order


def kan_features(params, x, basis="closed"):
    """Per-input features Φ[b,k,:] = [silu(x_bk), B_1(x_bk), …, B_G'(x_bk)] (docs/design.md §3).

    x: (B, d_in) -> Φ: (B, d_in, 1 + G'), G' = grid_size + order.
    basis: "closed" (uniform grid, fast) or "cox" (Cox–de Boor, any grid).
    """
    order = _check_params(params)
    if basis == "closed":   # silu column written by the same Function: no extra copy
        return _uniform_features(x, params["grid"], order, with_silu=True)
    if basis == "cox":
        return torch.cat([F.silu(x).unsqueeze(-1), bspline_basis(x, params["grid"], order)], dim=-1)
    raise ValueError(f"basis: got {basis!r}, expected 'closed' or 'cox'")


def kan_coefficients(params, mask=None):
    """Edge coefficient vectors c_jk = M_jk·[base_weight_jk, spline_weight_jk,:].

    mask: (d_out, d_in) or None -> c: (d_out, d_in, 1 + G'). The mask multiplies
    whole edges (docs/design.md §3), so masked edges get exactly zero gradient.
    """
    _check_params(params)
    coef = torch.cat([params["base_weight"].unsqueeze(-1), params["spline_weight"]], dim=-1)
    if mask is None:
        return coef
    if mask.shape != coef.shape[:2]:
        raise ValueError(f"mask: got shape {tuple(mask.shape)}, expected {tuple(coef.shape[:2])}")
    return coef * mask.to(coef.dtype).unsqueeze(-1)


def kan_forward_features(params, phi, mask=None):
    """y = Φ c: ONE matmul, (B, d_in·F) @ (d_in·F, d_out); never B×d_out×d_in.

    phi: (B, d_in, F) from kan_features, mask: (d_out, d_in) or None -> y: (B, d_out).
    """
    coef = kan_coefficients(params, mask)
    if phi.dim() != 3 or phi.shape[1:] != coef.shape[1:]:
        raise ValueError(f"phi: got shape {tuple(phi.shape)}, expected (B, {coef.shape[1]}, {coef.shape[2]})")
    return phi.flatten(1) @ coef.flatten(1).T


def kan_forward(params, x, mask=None, basis="closed"):
    """KAN layer y_j = Σ_k M_jk·φ_jk(x_k).  x: (B, d_in), mask: (d_out, d_in) -> (B, d_out)."""
    return kan_forward_features(params, kan_features(params, x, basis), mask)


# ----------------------------------------------------------------------------
# DKAN edge scores: literal std_b φ_jk(x_bk), then the exact fast form (fast path)
# and its mergeable-moments version that training uses (multi-process: sums all-reduce)
# ----------------------------------------------------------------------------

def kan_edge_activations(params, x):
    """Literal edge activations A[b,j,k] = φ_jk(x_bk), Cox–de Boor bases (docs/design.md §3).

    x: (B, d_in) -> A: (B, d_out, d_in). Materialises B×d_out×d_in: for reading
    and tests, not for training.
    """
    order = _check_params(params)
    bases = bspline_basis(x, params["grid"], order)                      # (B, d_in, G')
    base_part = params["base_weight"].unsqueeze(0) * F.silu(x).unsqueeze(1)
    spline_part = torch.einsum("bkg,jkg->bjk", bases, params["spline_weight"])
    return base_part + spline_part


def kan_edge_scores_literal(params, x):
    """DKAN edge importance as written: S[j,k] = std_b φ_jk(x_bk), correction 0.

    x: (B, d_in) -> S: (d_out, d_in); B = 1 gives zeros.
    """
    return kan_edge_activations(params, x).std(dim=0, correction=0)


def kan_edge_scores(params, x, basis="closed"):
    """Exact fast form of kan_edge_scores_literal: S[j,k] = sqrt(c_jkᵀ Cov_b(Φ_bk) c_jk), proven
    equal to it by tests/test_kan.py::test_fast_scores_equal_literal_scores.
    x: (B, d_in) -> (d_out, d_in); cost O(B·d_in·F² + d_out·d_in·F²), never B×d_out×d_in."""
    with torch.no_grad():
        return _scores_from_features(params, kan_features(params, x, basis))


def _scores_from_features(params, phi):
    """kan_edge_scores from features Φ: (B, d_in, F) -> (d_out, d_in).

    Two-pass covariance: Φ is shifted by its first sample (in float64) before the
    outer product, so large offsets do not cancel (docs/design.md §3: centre first)
    and constant features give exactly 0. Training scores through
    kan_scores_from_moments instead (mergeable over batches and ranks).
    """
    if phi.dim() != 3 or phi.shape[0] == 0:
        raise ValueError(f"phi: got shape {tuple(phi.shape)}, expected (B, d_in, F) with B >= 1")
    p = phi.detach().to(torch.float64).transpose(0, 1)                   # (d_in, B, F)
    p = p - p[:, :1]
    mean = p.mean(dim=1)                                                 # (d_in, F)
    cov = p.transpose(1, 2) @ p / phi.shape[0] - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    return _scores_from_covariance(cov, params)


def kan_moments(phi):
    """Mergeable feature moments (n, ΣΦ, ΣΦΦᵀ), all float64, from phi.detach().

    phi: (B, d_in, F) -> n: 0-dim, ΣΦ: (d_in, F), ΣΦΦᵀ: (d_in, F, F). Moments of
    several batches (or ranks) merge by elementwise sums.
    """
    if phi.dim() != 3:
        raise ValueError(f"phi: got shape {tuple(phi.shape)}, expected (B, d_in, F)")
    p = phi.detach().to(torch.float64).transpose(0, 1)                   # (d_in, B, F)
    n = torch.full((), float(phi.shape[0]), dtype=torch.float64, device=phi.device)   # a fill, no host copy
    return n, p.sum(dim=1), p.transpose(1, 2) @ p


def _scores_from_covariance(cov, params):
    """cov: (d_in, F, F) float64 per-input Cov_b(Φ_bk) -> S = sqrt(c_jkᵀ Σ_k c_jk): (d_out, d_in)."""
    coef = kan_coefficients(params).detach()
    if cov.shape != (coef.shape[1], coef.shape[2], coef.shape[2]):
        raise ValueError(f"moments: got covariance shape {tuple(cov.shape)}, "
                         f"expected ({coef.shape[1]}, {coef.shape[2]}, {coef.shape[2]})")
    c = coef.to(torch.float64).transpose(0, 1)                           # (d_in, d_out, F)
    var = ((c @ cov) * c).sum(dim=-1)                                    # (d_in, d_out)
    return var.T.clamp(min=0).sqrt().to(coef.dtype)


def kan_scores_from_moments(m, params):
    """S[j,k] = sqrt(c_jkᵀ Cov_k c_jk), Cov_k = E[ΦΦᵀ] − E[Φ]E[Φ]ᵀ, from merged moments:
    what training scores with (unmasked coefficients c).

    m: (n, ΣΦ (d_in, F), ΣΦΦᵀ (d_in, F, F)) as from kan_moments -> (d_out, d_in),
    in the dtype of params. Cost O(d_in·d_out·F²); never B×d_out×d_in. Not centred
    first (plain sums, so they merge over batches and ranks): a constant input scores
    ~1e-9 here where the two-pass kan_edge_scores gives exactly 0; the mask is the same
    unless such near-zero scores decide the top-k.
    """
    n, s1, s2 = m
    n = n.clamp(min=1.0)   # an empty pool (n = 0) gives scores 0, as dcm_ref.std_from_moments; no host read
    mean = s1 / n
    return _scores_from_covariance(s2 / n - mean.unsqueeze(-1) * mean.unsqueeze(-2), params)


def kan_magnitude_scores(params):
    """The "magnitude" ablation score of a KAN edge: ‖c_jk‖₂, the norm of its coefficients
    (base weight and spline weights), no batch statistics.  -> (d_out, d_in), params' dtype."""
    return kan_coefficients(params).detach().norm(dim=-1)


def kan_feature_scores(m, d_out):
    """The "feature" ablation score: sqrt(tr Cov_k), the total std of input k's basis vector Φ,
    the same for every class.  m: kan_moments -> (d_out, d_in) float64 (rows identical)."""
    n, s1, s2 = m
    n = n.clamp(min=1.0)
    mean = s1 / n                                                          # (d_in, F)
    var = (s2.diagonal(dim1=-2, dim2=-1) / n - mean * mean).sum(dim=-1)    # tr Cov_k: (d_in,)
    return var.clamp(min=0).sqrt().unsqueeze(0).expand(d_out, -1).contiguous()


# ----------------------------------------------------------------------------
# DKAN head: non-affine layer norm, then KAN with the DCM mask on coefficients
# ----------------------------------------------------------------------------

def layer_norm(x, eps=1e-5):
    """Non-affine layer norm over the last dim.  x: (B, d) -> (B, d).

    [choice] (docs/design.md §3): KAN bases vanish outside grid_range, so the DKAN head
    normalises its input to zero mean, unit variance per sample first.
    """
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def dkan_features(params, v, basis="closed"):
    """Φ of the DKAN head.  v: (B, d_in) backbone features -> (B, d_in, 1 + G')."""
    return kan_features(params, layer_norm(v), basis)


def dkan_forward(params, v, mask=None, basis="closed"):
    """DKAN head logits.  v: (B, d_in), mask: (d_out, d_in) or None -> (B, d_out)."""
    return kan_forward_features(params, dkan_features(params, v, basis), mask)


def dkan_edge_scores(params, v, basis="closed"):
    """DKAN edge scores std_b φ_jk(layer_norm(v)_bk), fast form.  v: (B, d_in) -> (d_out, d_in)."""
    return kan_edge_scores(params, layer_norm(v), basis)


# ----------------------------------------------------------------------------
# Fast path: B-spline bases on a uniform grid by a closed form, what training uses;
# proven equal to bspline_basis by tests/test_kan.py::test_closed_form_equals_cox_de_boor
# (values) and ::test_closed_form_gradient_equals_cox_de_boor_gradient (gradients)
# ----------------------------------------------------------------------------

def bspline_basis_uniform(x, grid, order):
    """Same values as bspline_basis, by the closed form on a uniform grid (fast path).

    x: (B, d_in), grid: (d_in, K) uniformly spaced knots per row (rows may differ)
    -> (B, d_in, K - 1 - order). Any order >= 0 (exact piece tables). Gradient
    w.r.t. x by a hand-written closed form; the grid gets no gradient.
    Raises ValueError if a row of the grid is not uniformly spaced. Equal to
    bspline_basis for finite x; x = ±inf gives 0 (the limit), NaN gives NaN in some bases.
    """
    return _uniform_features(x, grid, order, with_silu=False)


def _uniform_features(x, grid, order, with_silu):
    """Validated entry to _UniformBSpline.  x: (B, d_in) -> (B, d_in, [1 +] K - 1 - order).

    Half-precision x (float16, bfloat16) is computed in float32 and the result cast back:
    the expanded piece polynomials lose ~3x more than Cox–de Boor when evaluated in 8 bits.
    Under autocast the closed form (forward and backward) runs with autocast off, in x's
    dtype: a float32 x gives the eager float32 bases bit for bit.
    """
    _check_basis_args(x, grid, order)
    if x.dtype in (torch.float16, torch.bfloat16):
        return _uniform_features(x.float(), grid, order, with_silu).to(x.dtype)
    t0, h = _uniform_spacing(grid, order, x.dtype)
    with _autocast_off(x):
        return _UniformBSpline.apply(x.contiguous(), grid.detach(), t0, h, order, with_silu)


def _autocast_off(t):
    """Autocast off on t's device where it is on (else a no-op context), so the closed form
    (docs/design.md §3, fast path) runs in t's dtype: under bf16 autocast its piece matmul
    would run in bf16 (a dtype clash in the scatter, and bases good to 8 bits only)."""
    kind = t.device.type
    on = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
    return torch.autocast(kind, enabled=False) if on else contextlib.nullcontext()


_SPACING = {}   # _spacing_key(grid) -> a view of a grid already found uniform (eager only)


def _uniform_spacing(grid, order, dtype):
    """(t0, h): first knot and spacing per row, each (d_in,), from the live grid; ValueError
    (in eager) if a row is not uniform.

    The check reads the device (a host sync on CUDA), so its verdict is remembered per grid
    storage and version: a fixed grid is checked once, not at every forward; an in-place
    change (grid.copy_, grid[...] = ...) bumps the version and is checked again. A change
    through grid.data is not versioned by torch, so it is not re-checked (t0 and h still
    follow it). The entry keeps a view of the grid, so its address cannot be reused while cached.

    Under torch.compile the check is skipped (a host read is a graph break): the compiled
    graph assumes a uniform grid, as kan_init makes and nothing here changes. It still reads
    t0 and h from the live grid, so a grid moved to other uniform knots is followed; a grid
    made non-uniform gives wrong bases there, silently. One eager forward checks a changed grid.
    """
    if not torch.compiler.is_compiling():
        _check_uniform_once(grid)
    g = grid.detach()
    h = (g[:, -1].to(torch.float64) - g[:, 0].to(torch.float64)) / (grid.shape[1] - 1)
    return g[:, 0].to(dtype), h.to(dtype)


def _check_uniform_once(grid):
    """_check_uniform(grid), unless this grid (_spacing_key) was already found uniform. Eager only."""
    key = _spacing_key(grid)
    if key is None or key not in _SPACING:
        _check_uniform(grid)
        if key is not None:
            if len(_SPACING) >= 64:
                _SPACING.clear()
            _SPACING[key] = grid.detach()


def _spacing_key(grid):
    """(address, version, shape, strides, dtype, device) of grid, or None where that is not
    available (inference tensors carry no version). Eager only."""
    try:
        return grid.data_ptr(), grid._version, tuple(grid.shape), grid.stride(), grid.dtype, grid.device
    except RuntimeError:
        return None


def _check_uniform(grid):
    """ValueError unless every row of grid (d_in, K) is uniformly spaced (one host read)."""
    k = grid.shape[1]
    g = grid.detach().to(torch.float64)
    h = (g[:, -1] - g[:, 0]) / (k - 1)
    # Tolerance: the rounding of knots stored in `grid.dtype` (relative to their magnitude).
    tol = 1e-4 * h + 8 * torch.finfo(grid.dtype).eps * g.abs().amax(dim=1)
    if not bool((h > 0).all()) or not bool(((g.diff(dim=1) - h[:, None]).abs() <= tol[:, None]).all()):
        raise ValueError("grid: knots are not uniformly spaced along each row; "
                         "use bspline_basis (Cox–de Boor) for non-uniform grids")


def _locate(x, grid, t0, h):
    """Knot interval of each x and local coordinate, matching Cox–de Boor's [t_i, t_{i+1}).

    x: (B, d), grid: (d, K), t0, h: (d,) -> i: (B, d) float holding an integer in
    [-1, K-1] (-1 and K-1 mean outside the grid), u = (x - t_i)/h in [0, 1]: (B, d).
    """
    d, k = grid.shape
    s = (x - t0) / h
    i = s.floor().clamp_(0, k - 2).nan_to_num_(0.0)
    # floor((x - t0)/h) can be off by one at a knot through rounding; compare with
    # the stored knots themselves so the interval is exactly Cox–de Boor's.
    flat = (i.long() + k * torch.arange(d, device=x.device)).view(-1)
    g = grid.to(x.dtype).reshape(-1)
    lo, hi = g.index_select(0, flat).view_as(x), g.index_select(0, flat + 1).view_as(x)
    i = torch.where(x < lo, i - 1, torch.where(x >= hi, i + 1, i))
    # clamp: u is in [0, 1) up to rounding inside the grid; outside (values dropped
    # later) it keeps u^p finite, so huge or infinite x give 0, not inf·0 = NaN.
    return i, (s - i).clamp_(0, 1)


class _UniformBSpline(torch.autograd.Function):
    """Closed-form uniform B-spline bases (optionally after a silu column), closed-form backward.

    On a uniform grid B_g(x) = N_p((x - t_0)/h - g). With i the knot interval of x
    and u its local coordinate, the only non-zero bases are g = i - r, r = 0..p,
    with value P_r(u) (piece r of N_p) and derivative P_r'(u)/h. The work is done
    piece-major, (p+1, B, d), so every elementwise op runs over contiguous memory;
    one scatter then writes the p+1 values of each (b, k) into Φ.

    Double backward: the backward is itself made of differentiable ops; under
    create_graph it recomputes u from x (the saved powers carry no graph), so the
    second derivative is P_r''(u)/h² (and silu''), not a silent zero.
    """

    @staticmethod
    def forward(ctx, x, grid, t0, h, order, with_silu):
        n = grid.shape[1] - 1 - order
        width = n + int(with_silu)
        i, u = _locate(x, grid, t0, h)                                           # (B, d)
        r = torch.arange(order + 1, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        g = i - r                                                                # (p+1, B, d)
        gc = g.clamp(0, n - 1)
        # kept = [0 <= g < n] as 0/1 floats (float ops are much cheaper than bool masks on CPU):
        # drops x outside the grid (i = -1 or K-1) and pieces whose basis is cut off at the ends.
        kept = (1 - (g - gc).abs_()).clamp_(min=0)
        powers = _powers(u, order)                                               # (p+1, B, d)
        # clamp: the expanded polynomial can round to -1e-17 where a piece touches 0.
        vals = _polyval(powers, _piece_table(order, x)).clamp_(min=0).mul_(kept)
        # Flat position in Φ (B, d, width) of basis g of row (b, k); clamped dropped pieces add 0.
        rows = torch.arange(x.numel(), device=x.device).view(x.shape) * width + (width - n)
        index = gc.long().add_(rows)
        out = x.new_zeros(x.shape[0], x.shape[1], width)
        out.view(-1).scatter_add_(0, index.view(-1), vals.view(-1))
        if with_silu:
            out[..., 0] = F.silu(x)
        ctx.save_for_backward(x, grid, t0, powers, index, kept, h)
        ctx.order, ctx.with_silu = order, with_silu
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with _autocast_off(grad_out):
            return _UniformBSpline._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        """grad_out: (B, d, width) -> (grad_x (B, d), None, …), autocast already off."""
        x, grid, t0, powers, index, kept, h = ctx.saved_tensors
        p = ctx.order
        grad_x = torch.zeros_like(x)
        if p > 0:   # order 0 is piecewise constant: zero derivative
            if torch.is_grad_enabled():   # create_graph: u as a function of x, for the second derivative
                powers = _powers(_locate(x, grid, t0, h)[1], p)
            dvals = _polyval(powers[:p], _piece_table(p, x, derivative=True)).mul_(kept)
            picked = grad_out.reshape(-1).index_select(0, index.view(-1)).view_as(dvals)
            grad_x = (picked * dvals).sum(dim=0) / h   # dB/dx = P_r'(u)/h
        if ctx.with_silu:
            sig = torch.sigmoid(x)
            grad_x = grad_x + grad_out[..., 0] * sig * (1 + x * (1 - sig))   # silu'(x)
        return grad_x, None, None, None, None, None


def _uniform_piece_table(order):
    """Exact polynomial coefficients of the uniform (cardinal) B-spline pieces.

    -> A: (order+1, order+1) list of Fractions, A[m][r] = coefficient of u^m in
    piece r, i.e. N_p(u + r) for u ∈ [0, 1), from the truncated-power formula
    N_p(t) = 1/p! Σ_j (-1)^j C(p+1, j) (t - j)_+^p (only j ≤ r are active).
    """
    p = order
    table = [[Fraction(0)] * (p + 1) for _ in range(p + 1)]
    for r in range(p + 1):
        for m in range(p + 1):
            acc = sum((-1) ** j * math.comb(p + 1, j) * (r - j) ** (p - m) for j in range(r + 1))
            table[m][r] = Fraction(math.comb(p, m) * acc, math.factorial(p))
    return table


def _piece_table(order, like, derivative=False):
    """Polynomial coefficients of the uniform B-spline pieces, as a tensor like `like`.

    -> (order+1, order+1) with [m, r] = coefficient of u^m in P_r, or with
    derivative=True (order, order+1) with [m, r] = coefficient of u^m in P_r'.
    In eager, made once per (order, derivative, dtype, device) and kept (no host-to-device
    copy per forward: a host sync on CUDA); under torch.compile, Python constants (_piece_rows)
    folded into the graph. Read only.
    """
    if torch.compiler.is_compiling():
        return _piece_tensor(order, derivative, like.dtype, like.device)
    key = (order, derivative, like.dtype, like.device)
    if key not in _PIECE_TABLES:
        _PIECE_TABLES[key] = _piece_tensor(order, derivative, like.dtype, like.device)
    return _PIECE_TABLES[key]


def _piece_tensor(order, derivative, dtype, device):
    """_piece_rows(order, derivative) as a tensor: float64 (exact rows) rounded to dtype once."""
    return torch.tensor(_piece_rows(order, derivative), dtype=torch.float64, device=device).to(dtype)


_PIECE_TABLES = {}   # (order, derivative, dtype, device) -> _piece_tensor's answer (eager only)
_PIECE_ROWS = {}   # (order, derivative) -> _piece_rows' answer


@torch.compiler.assume_constant_result   # torch.compile calls it while tracing: a constant in the graph
def _piece_rows(order, derivative):
    """_uniform_piece_table(order) as float64 Python floats (each Fraction correctly rounded),
    or with derivative=True the rows m·A[m], m = 1..order (d/du Σ_m A[m] u^m = Σ_m m·A[m] u^(m-1)).

    -> tuple of (order+1) or (order) rows of order+1 floats; computed once per (order, derivative).
    """
    key = (order, derivative)
    if key not in _PIECE_ROWS:
        table = [[float(a) for a in row] for row in _uniform_piece_table(order)]
        if derivative:   # m·float(A[m]): the same float64 product as a float64 tensor times m
            table = [[m * a for a in table[m]] for m in range(1, order + 1)]
        _PIECE_ROWS[key] = tuple(tuple(row) for row in table)
    return _PIECE_ROWS[key]


def _powers(u, order):
    """u: (B, d) -> (order+1, B, d) = [1, u, u², …, u^order], by repeated products."""
    cols = [torch.ones_like(u)]
    for _ in range(order):
        cols.append(cols[-1] * u)
    return torch.stack(cols)


def _polyval(powers, table):
    """Σ_m table[m, r]·u^m for every piece r.  powers: (M, B, d), table: (M, R) -> (R, B, d)."""
    m, b, d = powers.shape
    return (table.T @ powers.reshape(m, b * d)).view(table.shape[1], b, d)


# ----------------------------------------------------------------------------
# The modules KANLinear and DKANLinear live in layers.py (DKAN shares the DCM step of DCMLinear)
# and stay reachable as kan.KANLinear / kan.DKANLinear; this file imports no other repo module.
# ----------------------------------------------------------------------------

def __getattr__(name):   # PEP 562: imported on first use
    if name in ("KANLinear", "DKANLinear"):
        import layers
        return getattr(layers, name)
    raise AttributeError(f"module 'kan' has no attribute {name!r}")
