"""CUDA properties: the DCM math gives the CPU's answer on the GPU, the DCM step makes
no host sync, and train.py's CUDA paths (eager, --amp, --compile) train.

Marked `cuda`; on a machine without a GPU every test here skips with the reason.
bench/gpu_check.sh runs them (`pytest -m cuda`) on a GPU machine.
"""
import json
import os

import pytest
import torch

import dcm_ref
import kan
import train
from conftest import check_dkan_autocast_matches_float32

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (run bench/gpu_check.sh on a GPU machine)")]


def _features(b=64, d=96, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(c, d, generator=g)


def test_edge_scores_on_cuda_equal_cpu():
    v, w = _features()
    cpu = dcm_ref.edge_scores(v.double(), w.double())
    gpu = dcm_ref.edge_scores(v.double().cuda(), w.double().cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scope", ["row", "global"])
def test_topk_mask_on_cuda_is_the_cpu_mask_even_with_ties(scope):
    scores = torch.randint(0, 4, (10, 96)).double()   # heavy ties: order must come from the index
    cpu = dcm_ref.topk_mask(scores, 0.1, scope)
    gpu = dcm_ref.topk_mask(scores.cuda(), 0.1, scope).cpu()
    assert torch.equal(gpu, cpu)


def test_masked_edges_get_no_gradient_on_cuda():
    v, w = (t.cuda() for t in _features())
    w.requires_grad_(True)
    mask = dcm_ref.topk_mask(dcm_ref.edge_scores(v, w.detach()), 0.1)
    dcm_ref.masked_linear(v, w, None, mask).square().sum().backward()
    assert torch.all(w.grad[mask == 0] == 0) and torch.any(w.grad[mask == 1] != 0)


def test_dfc_schedule_step_and_head_make_no_host_sync():
    """The DFC training step's DCM part (moments -> Eq. 2 scores -> top-k -> masked linear,
    forward and backward) never waits for the GPU: no .item(), no data-dependent shape."""
    v, w = (t.cuda() for t in _features(b=128, d=512, c=100))
    w.requires_grad_(True)
    state = dcm_ref.mask_init(w.shape, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            state = dcm_ref.mask_schedule_step(state, dcm_ref.moments(v),
                                               lambda m: dcm_ref.scores_from_moments(m, w.detach()), 0.1)
            dcm_ref.masked_linear(v, w, None, state.mask).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("make, d", [(lambda d: dcm_ref.DCMLinear(d, 100, keep=0.1, device="cuda"), 512),
                                     (lambda d: kan.DKANLinear(d, 10, keep=0.1, device="cuda"), 64)])
def test_drop_in_module_steps_make_no_host_sync(make, d):
    """DCMLinear / DKANLinear + attach, after the first step (which reads the counters and
    checks the grid once): forward, backward, optimizer step and the mask update never wait."""
    torch.manual_seed(0)
    m = make(d)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    dcm_ref.attach(m, opt)
    x = torch.randn(128, d, device="cuda")
    step = lambda: (opt.zero_grad(set_to_none=True), m(x).square().mean().backward(), opt.step())
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_convert_on_cuda_leaves_the_cuda_random_state_as_it_was():
    head = torch.nn.Linear(16, 4, device="cuda")
    state = torch.cuda.get_rng_state()
    dcm_ref.convert(torch.nn.Sequential(head), "0")
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_closed_form_kan_basis_in_bfloat16_on_cuda_is_the_rounded_exact_value():
    grid = kan.kan_init(4, 1)["grid"].cuda()
    x = (torch.rand(256, 4, device="cuda") * 2.2 - 1.1).bfloat16()
    exact = kan.bspline_basis(x.double(), grid.double(), 3)
    assert (kan.bspline_basis_uniform(x, grid, 3).double() - exact).abs().max() <= 2.0 ** -9 + 1e-6


def test_closed_form_kan_basis_on_cuda_equals_cox_de_boor():
    params = kan.kan_init(32, 10, generator=torch.Generator().manual_seed(0))
    x = torch.rand(64, 32, dtype=torch.float64) * 2.4 - 1.2
    grid = params["grid"].double()
    cox = kan.bspline_basis(x, grid, 3)
    closed = kan.bspline_basis_uniform(x.cuda(), grid.cuda(), 3).cpu()
    torch.testing.assert_close(closed, cox, rtol=1e-10, atol=1e-12)


def test_dkan_scores_fast_equal_literal_on_cuda():
    params = {k: t.double().cuda() for k, t in kan.kan_init(16, 5, generator=torch.Generator().manual_seed(1)).items()}
    x = (torch.rand(40, 16, dtype=torch.float64) * 2 - 1).cuda()
    torch.testing.assert_close(kan.kan_edge_scores(params, x),
                               kan.kan_edge_activations(params, x).std(0, correction=0), rtol=1e-9, atol=1e-12)


def _dkan_step(params, v, mask):
    """The functional DKAN step: v (B, d_in) -> logits (B, d_out), scores (d_out, d_in)."""
    phi = kan.dkan_features(params, v)
    return kan.kan_forward_features(params, phi, mask), kan.kan_scores_from_moments(kan.kan_moments(phi), params)


def _dkan_params(d_in, d_out, seed):
    p = kan.kan_init(d_in, d_out, generator=torch.Generator().manual_seed(seed))
    p["spline_weight"] = p["spline_weight"] * 10
    return {k: t.cuda().requires_grad_(k != "grid") for k, t in p.items()}


def test_dkan_under_bf16_autocast_on_cuda_computes_the_float32_features():
    """CUDA bf16 autocast: Φ, its gradient (backward inside the region), the float64 moments
    and the scores equal eager float32 bit for bit; the logits come from a bf16 matmul."""
    p = _dkan_params(96, 10, 0)
    v = (torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 3).cuda().requires_grad_(True)
    g = torch.randn(64, 96, 9, generator=torch.Generator().manual_seed(2)).cuda()
    check_dkan_autocast_matches_float32(p, v, g, "cuda")


def test_compiled_dkan_step_on_cuda_has_no_graph_break_and_equals_eager():
    """torch.compile(fullgraph=True) of the DKAN step on CUDA (mask from dcm_ref.topk_mask
    outside): forward and backward within 2e-5 · max|eager| per tensor (fused float32 sums)."""
    torch._dynamo.reset()
    p0 = _dkan_params(96, 10, 3)
    v0 = (torch.randn(128, 96, generator=torch.Generator().manual_seed(4)) * 3).cuda()
    mask = dcm_ref.topk_mask(_dkan_step(p0, v0, None)[1], 0.1)
    compiled = torch.compile(_dkan_step, fullgraph=True)

    def run(fn):
        p = {k: t.detach().clone().requires_grad_(k != "grid") for k, t in p0.items()}
        v = v0.clone().requires_grad_(True)
        y, scores = fn(p, v, mask)
        y.square().mean().backward()
        return y, scores, p["base_weight"].grad, p["spline_weight"].grad, v.grad

    for got, want in zip(run(compiled), run(_dkan_step)):
        assert (got - want).abs().max() <= 2e-5 * want.abs().max()


@pytest.mark.parametrize("extra", [[], ["--amp"], ["--compile"]], ids=["eager", "amp", "compile"])
@pytest.mark.parametrize("head", ["dfc", "dkan"])
def test_train_py_runs_on_cuda(tmp_path, head, extra):
    out = str(tmp_path / "run")
    argv = ["--device", "cuda", "--head", head, "--epochs", "2", "--limit-train", "600", "--out", out, *extra]
    assert train.main(argv) == 0
    final = json.load(open(os.path.join(out, "final.json")))
    assert final["test_acc_best"] > 0.5     # digits at 40 % noise: well above chance (0.1)
