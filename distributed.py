"""What crosses ranks when train.py runs under torchrun (docs/design.md §2; docs/multiprocess.md).

Not a separate code path: at world size 1 no process group exists and every helper
returns its input, so `python train.py` runs exactly as a single process. Each rank
trains on its equal shard of the GLOBAL batch; what is exchanged, and why:

    DCM moments      all_sum before scoring    -> every rank computes the same mask, from the global batch
    gradients        average_grads after backward, before clipping -> the global batch's step everywhere
    BN running stats average_bn_stats each epoch, before eval/checkpoint -> one set of buffers
    ELR memory rows  all_gather_rows each step -> the same (N, C) memory on every rank
    eval logits      all_gather_rows           -> identical metrics on every rank, 1/W of the compute each
    setup errors     first_failure             -> a user error on any rank stops them all
    run folder       from_rank0                -> rank 0 claims it (runs/<name>-2 ...), every rank uses that one
    stop signal      max_over_ranks            -> every rank stops after the same step, reporting the same signal

A collective that fails because another rank has gone (it stopped on an error of its own and
reported it) raises PeerLost, which train_cli.ExitCode reports in one line instead of a traceback.

Explicit all-reduces, not DDP: co-teaching has two networks and two losses per step, and
the Fig. 3 probe takes extra gradients (DDP's hooks assume one forward per backward).
"""
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

import layers


class Dist(NamedTuple):
    """This process's place in a torchrun job: rank, world size, local rank (its GPU index)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def dist_from_env(env):
    """Dist from torchrun's RANK, WORLD_SIZE, LOCAL_RANK (a mapping like os.environ); Dist() without
    WORLD_SIZE. Values torchrun would not set raise ValueError with a one-line message."""
    if "WORLD_SIZE" not in env:
        return Dist()
    try:
        dd = Dist(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        dd = None
    if dd is None or not (dd.world >= 1 and 0 <= dd.rank < dd.world and dd.local_rank >= 0):
        got = "/".join(str(env.get(k)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK = {got}; expected integers with 0 <= RANK < WORLD_SIZE (as torchrun sets them)")
    return dd


class PeerLost(RuntimeError):
    """A collective failed: in practice another rank has stopped (an error it reported, a
    non-finite loss, a kill) and closed its connections. The message is one line."""


@contextmanager
def _collective():
    """Turn the RuntimeError of a failed collective (gloo's "Connection closed by peer", NCCL's
    DistBackendError) into PeerLost, keeping the backend's first sentence as the reason."""
    try:
        yield
    except RuntimeError as e:
        raise PeerLost(f"another rank stopped; see its message (a collective failed: {_reason(e)})") from e


def _reason(e):
    """The first sentence of a backend error, without gloo's "[/path/pair.cc:553] " prefix."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".")


def init_distributed(dd):
    """Join the job through torchrun's env:// rendezvous. CPU tensors travel by gloo and CUDA
    tensors by NCCL, so the small CPU messages (setup errors, loss sums) need no GPU.

    torch._dynamo is imported first: the first optimizer built imports it lazily, and when
    that happens after init_process_group it keeps ten references to the default group
    (torch 2.13), so close() cannot free it. The group's gloo worker threads then live on
    into interpreter shutdown, and one that drops its last collective's tensors there
    aborts the process ("terminate called without an active exception", exit -6) after a
    finished run: about once in 30 two-rank runs on a loaded 2-core machine.
    tests/test_distributed.py checks that no gloo worker thread outlives close().
    """
    try:
        import torch._dynamo  # noqa: F401  (see the docstring)
    except Exception:   # a torch without a working dynamo: nothing to pre-import
        pass
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=dd.rank, world_size=dd.world)


def close():
    """Leave the process group (the end of a torchrun job)."""
    dist.destroy_process_group()


def all_sum(ts, dd):
    """Elementwise sum over ranks of a tuple of same-dtype tensors, in one all-reduce.

    The DCM heads' all_reduce on their moments (n, Σv, Σv²) / (n, ΣΦ, ΣΦΦᵀ) (train.init_state):
    moments merge by sums, so the result is the moments of the global batch. layers.all_sum_moments
    with a lost peer reported as PeerLost. Returns new tensors (the same tuple at world size 1).
    """
    if dd.world == 1:
        return ts
    with _collective():
        return layers.all_sum_moments(ts)


def all_gather_rows(t, sizes, dd):
    """Every rank's rows, concatenated in rank order. t: (sizes[rank], ...) -> (Σ sizes, ...)."""
    if dd.world == 1:
        return t
    assert len(t) == sizes[dd.rank], (len(t), sizes, dd)
    n = max(sizes)  # all_gather needs equal shapes: pad, gather, trim
    padded = torch.cat([t, t.new_zeros((n - len(t),) + tuple(t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(dd.world)]
    with _collective():
        dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _mean_over_ranks_(tensors, dd):
    """Replace each tensor (same dtype) by its mean over ranks, in place, with one all-reduce."""
    tensors = list(tensors)
    if dd.world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    with _collective():
        dist.all_reduce(flat)
    flat /= dd.world
    for t, c in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(c.view_as(t))


def average_grads(params, dd):
    """After backward: .grad ← mean over ranks. Each rank's loss is the mean over its equal shard,
    so this is the gradient of the global batch's mean loss, and identical on every rank."""
    _mean_over_ranks_((p.grad for p in params if p.grad is not None), dd)


def average_bn_stats(net, dd):
    """BatchNorm running mean/var ← mean over ranks. In training BN normalises with its own
    shard's statistics (as DDP without SyncBatchNorm); its running stats, used by evaluation
    and saved in checkpoints, are made one set so every rank evaluates the same model."""
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    _mean_over_ranks_((b for m in bns for b in (m.running_mean, m.running_var) if b is not None), dd)


def first_failure(failed, dd):
    """Lowest rank whose setup failed, or -1: one all-reduce that every rank reaches, so a
    user error on any rank stops them all, and no rank writes files before all have read them."""
    if dd.world == 1:
        return 0 if failed else -1
    r = torch.tensor([dd.rank if failed else dd.world])
    with _collective():
        dist.all_reduce(r, op=dist.ReduceOp.MIN)
    return -1 if int(r) == dd.world else int(r)


def from_rank0(obj, dd):
    """Rank 0's obj (a small picklable value) on every rank; obj is ignored elsewhere. Every rank
    must call it (a collective), also when rank 0 has nothing to send: it then sends None.
    It travels in CPU tensors: over gloo, also where CUDA tensors go by NCCL."""
    if dd.world == 1:
        return obj
    box = [obj if dd.rank == 0 else None]
    with _collective():
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def max_over_ranks(x, dd, device=None):
    """The largest of every rank's integer x (one all-reduce; x itself at world size 1)."""
    if dd.world == 1:
        return x
    t = torch.tensor([int(x)], dtype=torch.int64, device=device)
    with _collective():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)
