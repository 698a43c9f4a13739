"""The modules of layers.py (DCMLinear, KANLinear, DKANLinear, convert, attach; also reached as
dcm_ref.* and kan.*): outputs equal the pure functions', a training forward is masked by the
scores of its own batch, the schedule equals the pure one and advances once per optimizer step
(gradient accumulation included), masked edges get no gradient, state survives state_dict/.to(),
masks agree across 2 DDP ranks, torch.compile runs with no graph break, the README example runs."""
import copy
import os
import re
import socket
import tempfile
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dcm_ref as D
import kan
import layers
import nets
from conftest import record_value_reads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_step(model, opt, x, y=None):
    out = model(x)
    loss = out.square().mean() if y is None else F.cross_entropy(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return out


def _random_mask(shape, g):
    return (torch.rand(shape, generator=g) < 0.5).float()


# ----------------------------------------------------------------------------- outputs

@given(B=st.integers(1, 6), d=st.integers(1, 7), C=st.integers(1, 5), seed=st.integers(0, 99), bias=st.booleans())
def test_dcmlinear_output_equals_pure_functions(B, d, C, seed, bias):
    g = torch.Generator().manual_seed(seed)
    m = D.DCMLinear(d, C, bias=bias, warmup=5)        # warm-up: a training forward applies the stored mask
    m.mask.copy_(_random_mask((C, d), g))
    v = torch.randn(B, d, generator=g)
    assert torch.equal(m(v), D.masked_linear(v, m.weight, m.bias, m.mask))
    m.eval()
    assert torch.equal(m(v), F.linear(v, m.weight, m.bias))           # eval_mask="full": the paper's default
    m.eval_mask = "masked"
    assert torch.equal(m(v), D.masked_linear(v, m.weight, m.bias, m.mask))


@given(B=st.integers(2, 5), d=st.integers(1, 5), C=st.integers(1, 4), seed=st.integers(0, 99))
def test_dkanlinear_output_equals_pure_functions(B, d, C, seed):
    g = torch.Generator().manual_seed(seed)
    m = kan.DKANLinear(d, C, grid_size=3, order=2, warmup=5)
    m.mask.copy_(_random_mask((C, d), g))
    v = torch.randn(B, d, generator=g)
    assert torch.equal(m(v), kan.dkan_forward(m.params(), v, m.mask))
    m.eval()
    assert torch.equal(m(v), kan.dkan_forward(m.params(), v, None))
    k = kan.KANLinear(d, C)
    assert torch.equal(k(v), kan.kan_forward(k.params(), v))
    k.layer_norm = True                                                 # train.py's --head kan
    assert torch.equal(k(v), kan.dkan_forward(k.params(), v, None))


@settings(max_examples=30)
@given(B=st.integers(2, 9), d=st.integers(2, 12), C=st.integers(1, 6), keep=st.floats(0.05, 1.0),
       scope=st.sampled_from(D.SCOPES), seed=st.integers(0, 999))
def test_a_training_forward_is_masked_by_the_scores_of_its_own_batch(B, d, C, keep, scope, seed):
    """Fig. 2 / Eq. 2 timing: the mask a training forward applies is topk_mask of the edge
    scores of THAT forward's batch (the exact fast form of Eq. 2 and the pure top-k)."""
    g = torch.Generator().manual_seed(seed)
    m = D.DCMLinear(d, C, keep=keep, scope=scope)
    for _ in range(3):
        v = torch.randn(B, d, generator=g) * torch.rand(d, generator=g)
        expected = D.topk_mask(D.scores_from_moments(D.moments(v), m.weight), keep, scope)
        assert torch.equal(m(v), D.masked_linear(v, m.weight, m.bias, expected))
        assert torch.equal(m.mask, expected)
        m.end_step()


def test_a_dkan_training_forward_is_masked_by_the_dkan_scores_of_its_own_batch():
    torch.manual_seed(2)
    m = kan.DKANLinear(6, 4, keep=0.5)
    v = torch.randn(32, 6)
    expected = D.topk_mask(kan.dkan_edge_scores(m.params(), v), 0.5)
    assert torch.equal(m(v), kan.dkan_forward(m.params(), v, expected))
    assert torch.equal(m.mask, expected)


def test_leading_dimensions_are_kept_like_nn_linear():
    m = D.DCMLinear(4, 3)
    x = torch.randn(2, 5, 4)
    assert m(x).shape == (2, 5, 3)
    assert torch.equal(m(x), D.masked_linear(x.reshape(10, 4), m.weight, m.bias, m.mask).reshape(2, 5, 3))


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(6, 4, keep=0.5), lambda: kan.DKANLinear(6, 4, keep=0.5)])
def test_masked_edges_get_exactly_zero_gradient(make):
    torch.manual_seed(0)
    m = make()
    v = torch.randn(16, 6, requires_grad=True)
    m(v).square().sum().backward()                        # masked by this batch's scores
    assert 0 < int(m.mask.sum()) < m.mask.numel()
    dead = m.mask == 0
    for p in [q for q in m.parameters() if q.dim() >= 2]:
        g = p.grad if p.dim() == 2 else p.grad.abs().sum(-1)
        assert torch.equal(g[dead], torch.zeros_like(g[dead]))
        assert bool((g[~dead] != 0).any())


def test_no_gradient_reaches_features_through_masked_edges():
    torch.manual_seed(1)
    m = D.DCMLinear(5, 3, keep=0.4)
    v = torch.randn(8, 5, requires_grad=True)
    gz = torch.randn(8, 3)
    m(v).backward(gz)
    assert torch.allclose(v.grad, gz @ (m.weight * m.mask), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- schedule

@settings(max_examples=25)
@given(interval=st.integers(1, 3), warmup=st.integers(0, 3), stats=st.sampled_from(D.STATS),
       scope=st.sampled_from(D.SCOPES), seed=st.integers(0, 99))
def test_mask_sequence_is_the_pure_schedule_on_each_steps_own_batch(interval, warmup, stats, scope, seed):
    """Step s's forward applies mask_schedule_step's mask of step s, fed step s's own batch."""
    g = torch.Generator().manual_seed(seed)
    m = D.DCMLinear(6, 4, keep=0.3, interval=interval, warmup=warmup, stats=stats, scope=scope)
    state = D.mask_init((4, 6))
    for s in range(7):
        v = torch.randn(5, 6, generator=g) * torch.rand(6, generator=g)
        state = D.mask_schedule_step(state, D.moments(v), lambda mm: D.scores_from_moments(mm, m.weight),
                                     0.3, scope=scope, interval=interval, warmup=warmup, stats=stats)
        assert torch.equal(m(v), D.masked_linear(v, m.weight, m.bias, state.mask))
        m.end_step()
        assert torch.equal(m.mask, state.mask)
        assert (int(m.dcm_step), int(m.dcm_updates), m.step, m.updates) == (state.step, state.updates) * 2
        assert float(m.dcm_change) == float(state.change)


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(6, 3, keep=0.34), lambda: kan.DKANLinear(6, 3, keep=0.34),
                                  lambda: D.DCMLinear(6, 3, keep=0.34, stats="interval", interval=3)])
def test_gradient_accumulation_is_one_step_with_one_mask(make):
    """2 micro-batches, one opt.step(): the first micro-batch's forward chooses the step's mask
    (the schedule fed that micro-batch alone), the second applies it and counts as a hold
    forward (with stats="interval" its moments join the next pool); one schedule step."""
    torch.manual_seed(3)
    acc = make()
    opt = torch.optim.SGD(acc.parameters(), lr=0.1)
    D.attach(acc, opt)
    state, score = D.mask_init(acc.mask.shape), acc._scores
    for step in range(5):
        x = torch.randn(16, 6) * torch.rand(6)
        opt.zero_grad()
        for i, half in enumerate(x.split(8)):
            m = acc._moments(acc._features(half))
            state = D.mask_schedule_step(state, m, score, 0.34, interval=acc.interval, stats=acc.stats) if i == 0 else \
                state._replace(pooled=D.merge_moments(state.pooled, m) if acc.stats == "interval" else None)
            out = acc(half)
            assert torch.equal(acc.mask, state.mask)
            (out.square().sum() / 16).backward()
        opt.step()
        assert (acc.step, acc.updates) == (state.step, state.updates)
    assert acc.step == 5


def test_a_mask_saved_for_backward_is_never_overwritten():
    """An eval forward with eval_mask="masked" (or a hold forward) saves the mask for backward;
    a later update forward gives the module a new mask tensor instead of writing into that one."""
    torch.manual_seed(9)
    m = D.DCMLinear(6, 3, keep=0.34)
    m(torch.randn(8, 6))
    m.end_step()
    m.eval()
    m.eval_mask = "masked"
    loss_eval = m(torch.randn(8, 6)).sum()
    m.train()
    loss_train = m(torch.randn(8, 6) * torch.rand(6)).sum()
    (loss_eval + loss_train).backward()          # raised "modified by an inplace operation" when copied into
    assert m.weight.grad is not None


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(6, 3), lambda: kan.DKANLinear(6, 3), lambda: kan.KANLinear(6, 3)])
def test_an_empty_batch_gives_empty_logits_like_nn_linear(make):
    m = make()
    for train in (True, False):
        m.train(train)
        assert m(torch.randn(0, 6)).shape == (0, 3) and m(torch.randn(2, 0, 6)).shape == (2, 0, 3)
    if isinstance(m, layers.DCMModule):
        assert torch.equal(m.mask, torch.ones(3, 6)) and m.updates == 0   # nothing was scored


def test_extra_train_forward_and_eval_forward_do_not_advance_the_schedule():
    """Forwards (train or eval) never advance the step count; an eval forward never changes the mask."""
    torch.manual_seed(4)
    m = D.DCMLinear(6, 3, keep=0.34, interval=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    D.attach(m, opt)
    m(torch.randn(8, 6))                                   # an extra train-mode forward in step 0
    m.eval()
    mask = m.mask.clone()
    m(torch.randn(8, 6) * 100)                             # eval: neither steps nor scores
    m.train()
    assert m.step == 0 and torch.equal(m.mask, mask)
    _train_step(m, opt, torch.randn(8, 6))
    assert m.step == 1 and m.updates == 1
    mask = m.mask.clone()
    _train_step(m, opt, torch.randn(8, 6) * torch.rand(6))  # step 1 holds (interval 2)
    assert m.step == 2 and m.updates == 1 and torch.equal(m.mask, mask)


def test_forgetting_attach_warns_once():
    m = D.DCMLinear(4, 2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(layers.FORGOT_AFTER * 2):
            m(torch.randn(4, 4))
    hits = [x for x in w if "attach" in str(x.message)]
    assert len(hits) == 1


def test_attached_module_does_not_warn():
    m = D.DCMLinear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    D.attach(m, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(layers.FORGOT_AFTER + 5):
            _train_step(m, opt, torch.randn(4, 4))
    assert int(m.dcm_step) == layers.FORGOT_AFTER + 5


def test_attach_twice_raises_and_remove_allows_again():
    m = nn.Sequential(nn.Linear(4, 4), D.DCMLinear(4, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    att = D.attach(m, opt)
    with pytest.raises(ValueError, match="already attached"):
        D.attach(m, opt)
    att.remove()
    _train_step(m, opt, torch.randn(4, 4))
    assert int(m[1].dcm_step) == 0
    D.attach(m, opt)
    _train_step(m, opt, torch.randn(4, 4))
    assert int(m[1].dcm_step) == 1


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(8, 5, keep=0.25), lambda: kan.DKANLinear(8, 5, keep=0.25)])
@pytest.mark.parametrize("freeze", [True, False])
def test_attach_with_freeze_leaves_the_masked_entries_exactly_unchanged(make, freeze):
    """attach(freeze=True) is --dcm-freeze: under SGD with momentum and weight decay, the entries
    a step's mask dropped keep their values through that step, the kept ones train. Without
    freeze, weight decay moves the masked entries (so the comparison can fail)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), make())
    head = model[2]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    D.attach(model, opt, freeze=freeze)
    masked_moved, kept_moved = [], []
    for step in range(5):
        before = [getattr(head, k).detach().clone() for k in head._MASKED]
        _train_step(model, opt, torch.randn(16, 6))
        mask = head.mask.clone()                      # the mask this step's forward used
        for k, old in zip(head._MASKED, before):
            m = mask.reshape(mask.shape + (1,) * (old.dim() - 2)).expand_as(old) != 0
            moved = getattr(head, k).detach() != old
            masked_moved.append(bool(moved[~m].any()))
            kept_moved.append(bool(moved[m].any()))
    assert all(kept_moved)
    assert not any(masked_moved) if freeze else any(masked_moved)


def test_attach_with_freeze_removes_both_hooks():
    m = nn.Sequential(nn.Linear(4, 4), D.DCMLinear(4, 2, keep=0.5))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.5)
    att = D.attach(m, opt, freeze=True)
    assert len(att.handles) == 2
    att.remove()
    _train_step(m, opt, torch.randn(4, 4))
    assert m[1].step == 0 and m[1]._before_step is None
    with pytest.raises(ValueError, match="freeze"):
        D.attach(m, opt, freeze="yes")


def test_attach_without_dcm_module_raises():
    with pytest.raises(ValueError, match="no DCM module"):
        D.attach(nn.Linear(3, 2), torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1))


@pytest.mark.parametrize("kw, match", [({"keep": 0.0}, "keep"), ({"scope": "col"}, "scope"), ({"interval": 0}, "interval"),
                                       ({"warmup": -1}, "warmup"), ({"stats": "epoch"}, "stats"), ({"eval_mask": "x"}, "eval_mask")])
def test_bad_arguments_raise_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        D.DCMLinear(4, 2, **kw)


# ----------------------------------------------------------------------------- state

def _trained(make, steps=3, seed=5):
    torch.manual_seed(seed)
    m = make()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    D.attach(m, opt)
    for _ in range(steps):
        _train_step(m, opt, torch.randn(8, 6))
    return m


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(6, 3, keep=0.34, stats="interval", interval=2),
                                  lambda: kan.DKANLinear(6, 3, keep=0.34, stats="interval", interval=2)])
def test_state_dict_round_trip_gives_the_same_outputs_and_schedule(make):
    a = _trained(make, steps=4)                             # updates at steps 0 and 2; step 3 pooled
    b = make()
    b.load_state_dict(a.state_dict())
    assert int(a.pooled_n) > 0                              # mid-interval: the pool is part of the state
    x = torch.randn(8, 6)
    assert torch.equal(a(x), b(x))
    for m in (a, b):
        m.end_step()
    assert torch.equal(a.mask, b.mask) and int(a.dcm_step) == int(b.dcm_step) == 5
    assert int(a.dcm_updates) == 3
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(6, 3, keep=0.34, stats="interval", interval=2),
                                  lambda: kan.DKANLinear(6, 3, keep=0.34, stats="interval", interval=2)])
def test_a_stepped_module_loading_a_state_continues_from_the_loaded_schedule(make):
    """The schedule keeps a host copy of its counters; load_state_dict must refresh it."""
    a, b = _trained(make, steps=4), _trained(make, steps=1, seed=6)   # b has counters of its own
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 6)
    for m in (a, b):
        m.train()
        m(x)
        m.end_step()
    assert int(a.dcm_step) == int(b.dcm_step) == 5 and int(a.dcm_updates) == int(b.dcm_updates) == 3
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pooled_n, b.pooled_n)


@pytest.mark.parametrize("make", [lambda: D.DCMLinear(16, 5, keep=0.3), lambda: D.DCMLinear(16, 5, keep=0.3, stats="interval", interval=2),
                                  lambda: kan.DKANLinear(16, 5, keep=0.3), lambda: D.DCMLinear(16, 5, keep=0.3, score="random"),
                                  lambda: kan.DKANLinear(16, 5, keep=0.3, score="feature")])
def test_a_dcm_step_reads_no_tensor_value_in_a_single_process(make, monkeypatch):
    """On CUDA every read of a tensor's value (int(), float(), bool(), .item()) is a host sync:
    a single-process training forward + end_step makes none (the counters live on the host)."""
    torch.manual_seed(0)
    m = make()
    m(torch.randn(32, 16))            # DKAN: the first forward checks the grid once
    m.end_step()
    reads = record_value_reads(monkeypatch)
    for _ in range(5):
        m(torch.randn(32, 16))
        m.end_step()
    m.end_step()                      # a step with no forward: only the step count advances
    monkeypatch.undo()
    assert reads == [] and int(m.dcm_step) == 7


def test_mask_state_is_a_copy_of_the_schedule_state():
    """mask_state() gives what the pure functions take: the module's mask, counters, change and
    pool, as copies (changing them leaves the module as it was)."""
    m = _trained(lambda: D.DCMLinear(6, 3, keep=0.34, stats="interval", interval=2), steps=4)
    st = m.mask_state()
    assert (st.step, st.updates, float(st.change)) == (4, 2, float(m.dcm_change)) and st.change is not m.dcm_change
    assert torch.equal(st.mask, m.mask) and st.mask is not m.mask
    assert st.pooled is not None and st.pooled[0].dim() == 0 and float(st.pooled[0]) == float(m.pooled_n) == 8
    st.mask.zero_(), st.pooled[1].zero_()
    assert m.mask.sum() > 0 and m.pooled_s1.abs().sum() > 0


def test_to_dtype_keeps_statistics_float64_and_mask_exact():
    m = _trained(lambda: D.DCMLinear(6, 3, keep=0.34, stats="interval", interval=2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.to(torch.bfloat16)
    for k in layers.DCMModule._F64:
        assert getattr(m, k).dtype == torch.float64 and torch.equal(getattr(m, k), before[k])
    assert m.weight.dtype == torch.bfloat16 and torch.equal(m.mask.float(), before["mask"])


def test_autocast_scores_come_from_float64_moments_of_the_features():
    """Under bf16 autocast the logits are bf16, but the mask is the one of the float64 moments."""
    torch.manual_seed(8)
    m = D.DCMLinear(6, 3, keep=0.5)
    v = torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(m.mask, D.topk_mask(D.scores_from_moments(D.moments(v), m.weight), 0.5))


# ----------------------------------------------------------------------------- convert

class _TorchvisionResNet50(nets.ResNet50):
    """nets.ResNet50 with torchvision's classifier attribute `fc` (nets.py leaves it to the head)."""

    def __init__(self, num_classes=5):
        super().__init__((3, 32, 32))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(super().forward(x))


def test_convert_torchvision_resnet50_keeps_weights_and_outputs():
    torch.manual_seed(6)
    model = _TorchvisionResNet50()
    old_w, old_b = model.fc.weight, model.fc.bias
    opt = torch.optim.SGD(model.parameters(), lr=0.01)     # built BEFORE convert: still trains the head
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    before = model(x)
    head = D.convert(model, "fc", keep=0.1)
    assert model.fc is head and head.weight is old_w and head.bias is old_b
    assert torch.equal(model(x), before)
    model.train()
    D.attach(model, opt)
    _train_step(model, opt, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert int(head.mask.sum()) == 5 * round(0.1 * 2048)


def test_convert_sequential_last_layer_and_dotted_timm_head():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    head = D.convert(seq, "-1", keep=0.5)
    assert seq[2] is head and head.keep == 0.5
    timm_like = nn.Module()
    timm_like.head = nn.Module()
    timm_like.head.fc = nn.Linear(8, 3)
    assert D.convert(timm_like, "head.fc") is timm_like.head.fc


def test_convert_leaves_the_global_random_state_as_it_was():
    """A seeded script that converts its head draws the same numbers afterwards as one that does not."""
    torch.manual_seed(0)
    D.convert(nn.Sequential(nn.Linear(4, 3)), "0")
    after_convert = torch.rand(3)
    torch.manual_seed(0)
    nn.Sequential(nn.Linear(4, 3))
    assert torch.equal(torch.rand(3), after_convert)


def test_convert_errors_name_the_linear_layers():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="no submodule 'fc'.*0, 2"):
        D.convert(seq)
    with pytest.raises(ValueError, match="ReLU"):
        D.convert(seq, "1")


# ----------------------------------------------------------------------------- DDP (2 ranks, gloo)

def _ddp_worker(rank, port, folder):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)                                   # same init on both ranks
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    D.convert(model, "2", keep=0.25)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    D.attach(ddp, opt)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        x = torch.randn(16, 6, generator=g) * torch.rand(6, generator=g) * 3   # the global batch
        with torch.no_grad():
            v = model[1](model[0](x))                      # features of the whole global batch
        _train_step(ddp, opt, x[rank * 8:(rank + 1) * 8])
        expected = D.topk_mask(D.scores_from_moments(D.moments(v), model[2].weight), 0.25)
        out.append((model[2].mask.clone(), expected))
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()
    # Leave without tearing down: in torch 2.13 the DDP reducer's destructor (holding the GIL) can
    # join a gloo worker thread that waits for the GIL to free a finished work: a hang at exit
    # (seen in 2 of ~6 runs; py-spy: ~ProcessGroupGloo -> thread::join vs AsyncWork's decref).
    os._exit(0)


def test_ddp_two_gloo_ranks_pick_identical_masks_from_the_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(port, folder), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(folder, f"rank{r}.pt")) for r in (0, 1))
    for (m0, e0), (m1, e1) in zip(r0, r1):
        assert torch.equal(m0, m1)
        assert torch.equal(m0, e0) and torch.equal(e0, e1)
    assert not torch.equal(r0[0][0], r0[2][0])             # the mask moved


# ----------------------------------------------------------------------------- torch.compile

@pytest.mark.parametrize("make", [lambda: D.DCMLinear(8, 3, keep=0.25), lambda: kan.DKANLinear(8, 3, keep=0.25),
                                  lambda: D.DCMLinear(8, 3, keep=0.25, interval=2, warmup=1, stats="interval"),
                                  lambda: D.DCMLinear(8, 3, keep=0.25, score="random", seed=3)])
def test_torch_compile_fullgraph_trains_like_eager(make):
    """torch.compile(fullgraph=True) of a model with a DCM head: training steps (the DCM step
    in the forward, backward, optimizer step with attach's hook) run with no graph break, give
    eager's masks exactly and its weights within float tolerance, and compile one graph per
    schedule phase (warm-up / update / hold), never one per step."""
    import torch._dynamo as dynamo
    dynamo.reset()
    dynamo.utils.counters.clear()
    torch.manual_seed(7)
    eager = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), make())
    comp = copy.deepcopy(eager)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, comp)]
    D.attach(eager, opts[0])
    D.attach(comp, opts[1])
    for _ in range(3):                    # eager steps first: comp's head holds a warm-start hint
        x = torch.randn(16, 6)
        _train_step(eager, opts[0], x)
        _train_step(comp, opts[1], x)
    compiled = torch.compile(comp, fullgraph=True)
    for _ in range(6):
        x = torch.randn(16, 6)
        _train_step(eager, opts[0], x)
        _train_step(compiled, opts[1], x)
        assert torch.equal(eager[2].mask, comp[2].mask)
        for p, q in zip(eager[2].parameters(), comp[2].parameters()):
            assert torch.allclose(p, q, atol=1e-5)
    phases = {D.schedule_phase(s, eager[2].interval, eager[2].warmup) for s in range(3, 9)}
    assert comp[2].step == 9 and comp[2].updates == eager[2].updates
    assert sum(dynamo.utils.counters["graph_break"].values()) == 0
    assert dynamo.utils.counters["stats"]["unique_graphs"] == len(phases)


# ----------------------------------------------------------------------------- README example

def readme_block(after):
    """The first ```python block of README.md after the line `after`."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_function_snippet_runs_verbatim():
    scope = {}
    exec(compile(readme_block("Use the functions in your own code:"), "README.md:functions", "exec"), scope)
    v, w, M, logits = scope["v"], scope["w"], scope["M"], scope["logits"]
    assert logits.shape == (128, 10) and (M.sum(dim=1) == round(0.1 * 512)).all()
    logits.square().sum().backward()
    assert (w.grad[M == 0] == 0).all() and (w.grad[M != 0] != 0).any()


def test_readme_example_is_short_and_runs_verbatim():
    code = readme_block("## Use DCM in your own model")
    assert len(code.strip().splitlines()) <= 30
    scope = {}
    exec(compile(code, "README.md:Use DCM in your own model", "exec"), scope)
    head = scope["model"].fc
    assert isinstance(head, D.DCMLinear) and int(head.dcm_step) > 0
    assert int(head.mask.sum()) == head.out_features * round(head.keep * head.in_features)


# ----------------------------------------------------------------------------- train.py runs this same step

@pytest.mark.parametrize("flags", [["--head", "dfc"], ["--head", "dfc", "--dcm-stats", "interval", "--dcm-interval", "2",
                                                       "--dcm-warmup", "1", "--dcm-freeze"],
                                   ["--head", "dkan", "--keep", "0.3"]])
def test_train_step_and_the_drop_in_pick_the_same_masks_on_the_same_batches(flags):
    """train.py's step (train.train_step on the network train.py builds) and a user's model made
    drop-in style (a plain nn.Linear head turned into DCM by convert / the DKAN module, attached
    with the same freeze), fed the same batches with the same weights and optimizer, hold the
    same mask and the same weights after every step. Fails if the two ever take different paths."""
    import runfolder
    import train
    import distributed
    import losses
    args = train.build_parser().parse_args(flags)
    torch.manual_seed(0)
    net = train.build_net(args, (1, 8, 8), 10)
    opt = train.make_optimizer(args, net)
    layers.attach(net, opt, freeze=args.dcm_freeze)
    state = runfolder.TrainState(nets=[net], opts=[opt], y_noisy=torch.zeros(0), dist=distributed.Dist())
    user = nn.Sequential(copy.deepcopy(net.backbone), nn.Linear(256, 10))
    dcm = dict(keep=args.keep, interval=args.dcm_interval, warmup=args.dcm_warmup, stats=args.dcm_stats)
    if args.head == "dfc":
        user[1].load_state_dict({"weight": net.head.weight.detach(), "bias": net.head.bias.detach()})
        D.convert(user, "1", **dcm)
    else:
        user[1] = kan.DKANLinear(256, 10, **dcm)
        user[1].load_state_dict(net.head.state_dict())
    user_opt = torch.optim.SGD(user.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=1e-4)
    D.attach(user, user_opt, freeze=args.dcm_freeze)
    loss_fn = losses.make_loss("ce", 10, "digits")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        train.train_step(args, state, x, y, torch.arange(32), loss_fn, 0.0, 1)
        loss = loss_fn(user(x).float(), y).mean()
        user_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(user.parameters(), args.grad_clip)
        user_opt.step()
        assert torch.equal(net.head.mask, user[1].mask) and net.head.updates == user[1].updates
        for p, q in zip(net.parameters(), user.parameters()):
            assert torch.equal(p, q)
    assert 0 < int(net.head.mask.sum()) < net.head.mask.numel()


def test_a_hand_written_drop_in_loop_reproduces_a_train_py_run(tmp_path):
    """End to end: `python train.py --save-masks` on the embedded digits, and a user's loop
    written from the README (their own nn.Sequential, dcm_ref.convert + attach, plain SGD, the
    same batches and LR schedule): the same mask after every epoch and the same test accuracy.
    (docs/design.md §2: the drop-in runs the same DCM step as train.py.)"""
    import json
    import math
    import subprocess
    import sys
    import numpy as np
    import data
    import train
    flags = ["--epochs", "2", "--threads", "1", "--noise-rate", "0.6"]
    out = tmp_path / "run"
    subprocess.run([sys.executable, "train.py", *flags, "--save-masks", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    args = train.build_parser().parse_args(flags)
    d, _, loss_fn = train.load_data(args, torch.device("cpu"), {})
    torch.manual_seed(args.seed)
    model = nn.Sequential(nets.make_backbone("mlp", d.in_shape), nn.Linear(256, d.C))
    D.convert(model, "1", keep=args.keep)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=1e-4)
    D.attach(model, opt)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    N, B, step = len(d.y), args.batch_size, 0
    total = args.epochs * ((N - B) // B + 1)
    for epoch in (1, 2):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
        for i in range(0, N - B + 1, B):
            idx = perm[i:i + B]
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = loss_fn(model(data.to_float(d.x[idx], d.mean, d.std)), d.y_noisy[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            step += 1
        saved = np.load(out / "masks" / f"epoch_{epoch:03d}.npz")["mask"]
        assert (saved == (model[1].mask.numpy() != 0)).all()
        model.eval()
        with torch.no_grad():
            acc = (model(data.to_float(d.x_test, d.mean, d.std)).argmax(1) == d.y_test).float().mean().item()
        model.train()
        assert acc == rows[epoch - 1]["test_acc"] and model[1].updates == rows[epoch - 1]["mask_updates"]


# ----------------------------------------------------------------------------- scores other than Eq. 2

def _definition(m, score, v):
    """The (C, d) scores `score` defines for module m on batch v, from the pure functions."""
    if score == "random":
        return D.random_scores(tuple(m.mask.shape), m.seed, m.updates)
    if isinstance(m, layers.DKANLinear):
        mom = kan.kan_moments(kan.dkan_features(m.params(), v))
        return {"std": lambda: kan.kan_scores_from_moments(mom, m.params()),
                "magnitude": lambda: kan.kan_magnitude_scores(m.params()),
                "feature": lambda: kan.kan_feature_scores(mom, m.out_features)}[score]()
    mom = D.moments(v)
    return {"std": lambda: D.scores_from_moments(mom, m.weight), "magnitude": lambda: D.magnitude_scores(m.weight),
            "feature": lambda: D.feature_scores(D.std_from_moments(mom), m.out_features)}[score]()


@pytest.mark.parametrize("cls", [D.DCMLinear, kan.DKANLinear])
@pytest.mark.parametrize("score", D.SCORES)
def test_each_score_selects_the_top_k_of_its_definition_while_training(cls, score):
    """Every step's mask is topk_mask of the chosen score's pure definition on that step's batch
    and weights (same k, same schedule), and the head's output uses it."""
    torch.manual_seed(1)
    m = cls(12, 5, keep=0.25, score=score, seed=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    D.attach(m, opt)
    for _ in range(4):
        v = torch.randn(16, 12) * torch.rand(12) * 3
        expected = D.topk_mask(_definition(m, score, v), 0.25)
        out = _train_step(m, opt, v)
        assert torch.equal(m.mask, expected) and (m.mask.sum(dim=1) == 3).all()
        assert m.updates == m.step
    assert m.step == 4 and (score == "std") == ("score=" not in repr(m))


@pytest.mark.parametrize("cls", [D.DCMLinear, kan.DKANLinear])
def test_random_masks_ignore_the_data_are_redrawn_at_each_update_and_follow_the_seed(cls):
    """Two heads with the same seed on different data and weights draw the same masks; every
    update draws a new one (interval 2: held in between); another seed draws others."""
    torch.manual_seed(0)
    heads = [cls(40, 6, keep=0.1, score="random", seed=9, interval=2) for _ in range(2)]
    other = cls(40, 6, keep=0.1, score="random", seed=10, interval=2)
    masks = []
    for s in range(6):
        for i, h in enumerate(heads + [other]):
            h(torch.randn(8, 40) * (i + 1) + i)
            h.end_step()
        assert torch.equal(heads[0].mask, heads[1].mask) and not torch.equal(heads[0].mask, other.mask)
        masks.append(heads[0].mask.clone())
    assert [torch.equal(masks[s], masks[s - 1]) for s in range(1, 6)] == [True, False, True, False, True]
    assert heads[0].updates == 3


def test_magnitude_mask_ignores_the_batch_and_feature_rows_are_alike():
    torch.manual_seed(0)
    a = D.DCMLinear(30, 4, keep=0.2, score="magnitude")
    b = copy.deepcopy(a)
    a(torch.randn(8, 30))
    b(torch.randn(8, 30) * torch.rand(30) * 10 + 3)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.mask, D.topk_mask(a.weight.abs(), 0.2))
    for m in (D.DCMLinear(30, 4, keep=0.2, score="feature"), kan.DKANLinear(30, 4, keep=0.2, score="feature")):
        m(torch.randn(8, 30) * torch.rand(30) * 5)
        assert all(torch.equal(row, m.mask[0]) for row in m.mask) and m.mask.sum() == 4 * 6


def test_a_resumed_random_head_continues_the_draw_sequence():
    torch.manual_seed(0)
    a = D.DCMLinear(20, 3, keep=0.2, score="random", seed=5)
    xs = [torch.randn(4, 20) for _ in range(6)]
    for x in xs[:3]:
        a(x)
        a.end_step()
    b = D.DCMLinear(20, 3, keep=0.2, score="random", seed=5)
    b.load_state_dict(a.state_dict())
    for x in xs[3:]:
        a(x), b(x)
        a.end_step(), b.end_step()
        assert torch.equal(a.mask, b.mask)
