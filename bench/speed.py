"""Speed benchmark of dcm-ref: what the exact fast forms of Eq. 2 and of the DKAN score
save (docs/design.md, "Fast paths"), as RATIOS of two (or three) implementations timed
side by side in one process: for each comparison the callables run interleaved (A, B,
then B, A, ...) for many rounds and the ratio is the median over rounds of t_A / t_B
from the same round, so load from other processes hits both sides alike. One thread by
default (--threads). Run from the repository root:

    python -m bench speed                       # full table at the four SHAPES
    python -m bench speed --quick               # tiny shapes, a few seconds (used by the tests)
    python -m bench speed --device cuda --out speed.md

Rows (ratio = A / B; the (B, d, C) are batch, features, classes):
  DFC / FC head fwd+bwd        layers.DCMLinear (train.py's DFC head) with a fresh mask every step
                               (moments -> Eq. 2 fast form -> top-k -> mask change -> masked
                               linear, end_step) vs nn.Linear
  DFC / FC train step (mlp)    train.py's step: nets.Net("mlp" backbone of width d, make_head
                               "dfc" | "fc") + CE + SGD step, the DFC head attached (its
                               forward runs the DCM step); and 10 such steps with
                               --dcm-interval 10 (mask cost amortised)
  DCMLinear / nn.Linear        the same step with the drop-in made by dcm_ref.convert + attach
    train step (mlp)           on an nn.Sequential (the same DCM step as train.py's) vs nn.Linear
  score literal / fast         Eq. 2 as written (B×C×d) vs the exact |W|·std_b v: time, peak memory
  KAN closed / Cox–de Boor     kan.kan_forward(basis="closed") vs basis="cox", fwd+bwd
  KAN closed / nn.Linear       the same closed-form KAN vs a linear head of the same (d, C)
  DKAN score literal / fast    std_b φ_jk(x_bk) as written vs sqrt(c_jkᵀ Σ_k c_jk): time, memory

The target column states the bounds of docs/design.md ("Speed targets"). The accuracy
benchmark is bench/accuracy.py (grid) and bench/report.py (tables); the command line, bench/cli.py.

Peak memory: on CPU, torch.profiler(profile_memory=True); each op's self
allocation (bytes allocated minus freed inside it, children excluded) is summed in
start-time order and the peak of that running sum is reported, together with the
largest single allocation. On CUDA, torch.cuda.max_memory_allocated over the call.
"""
import copy
import itertools
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import dcm_ref
import kan
import layers
import nets

# ----------------------------------------------------------------------------- settings

SHAPES = ((256, 512, 10), (256, 512, 100), (128, 2048, 14), (256, 2048, 1000))   # (B, d, C): MLP/ResNet head shapes of 10-1000 classes
QUICK_SHAPES = ((8, 16, 3), (16, 32, 5))       # --quick: seconds, for the tests
TARGET_SHAPE = (256, 512, 100)                 # where the score and KAN targets apply (docs/design.md)
BUDGET_S = 4.0                                 # wall time per comparison, sets the rounds
ROUNDS = (7, 300)                              # min and max interleaved rounds
# Peak bytes of the literal forms, in units of B·C·d·itemsize (measured at small shapes
# with the profiler below): FC literal holds A only; DKAN literal holds the silu part,
# the bmm output and their sum.
LITERAL_FACTOR = {"score": 1.0, "dkan": 3.0}
STEP = "DFC / FC train step (mlp backbone)"                   # row names of the train-step rows
STEP_INTERVAL = 10                                             # --dcm-interval of the amortised row
STEPS = f"DFC / FC {STEP_INTERVAL} train steps, mask every {STEP_INTERVAL} (mlp backbone)"
MODULE_STEP = "DCMLinear / nn.Linear train step (mlp backbone)"   # the drop-in module, attach()ed


# ----------------------------------------------------------------------------- timing and memory

def sync(device):
    """Wait for queued device work, so the timers read finished work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device):
    """Seconds for one call of fn, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_interleaved(fns, device, rounds):
    """Time fns (name -> callable) interleaved; -> name -> list of seconds, one per round.

    Two warm-up calls each first (allocator, lazy init). The order flips every
    round so neither side always runs right after the other.
    """
    names = list(fns)
    for name in names * 2:
        fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_once(fns[name], device))
    return times


def pick_rounds(fns, device, budget_s, bounds):
    """Rounds that fit budget_s, from one call of each fn, clamped to bounds=(lo, hi)."""
    per_round = sum(time_once(fn, device) for fn in fns.values())
    return int(min(max(budget_s / max(per_round, 1e-9), bounds[0]), bounds[1]))


def paired_ratio(ta, tb):
    """Median over rounds of t_A / t_B measured in the same round."""
    return statistics.median(a / b for a, b in zip(ta, tb))


def allocation_deltas(fn, device):
    """Bytes allocated minus freed by each profiler event of one call of fn, in start order.

    Self values (children excluded), so nested ops are not counted twice; the
    "[memory]" events carry frees outside any op.
    """
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        fn()
        sync(device)
    field = "self_device_memory_usage" if device.type == "cuda" else "self_cpu_memory_usage"
    return [getattr(e, field) for e in sorted(prof.events(), key=lambda e: e.time_range.start)]


def peak_memory(fn, device):
    """-> (peak bytes above the start, largest single allocation in bytes) for one call of fn.

    CPU: peak of the running sum of allocation_deltas. CUDA: max_memory_allocated.
    """
    fn()   # warm-up, so lazy one-time allocations are not counted
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    deltas = allocation_deltas(fn, device)
    peak = max(itertools.accumulate(deltas, initial=0))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    return peak, max(deltas, default=0)


# ----------------------------------------------------------------------------- the compared callables

def dfc_head_fns(B, d, C, keep, device, gen):
    """Head only: v (B, d) needs grad. -> {"DFC": fn, "FC": fn}: a layers.DCMLinear (train.py's
    DFC head) in train mode with a mask update every step (--dcm-interval 1, the most expensive
    setting: moments -> Eq. 2 scores -> top-k -> mask change -> masked linear, then end_step)
    vs an nn.Linear of the same weights; forward and backward.
    """
    v = torch.randn(B, d, generator=gen).to(device).requires_grad_()
    gz = torch.randn(B, C, generator=gen).to(device)
    with torch.random.fork_rng(devices=[]):   # the heads' own init draws no number of the caller's
        dfc = layers.DCMLinear(d, C, keep=keep, device=device)
        fc = nn.Linear(d, C, device=device)
    fc.load_state_dict(dict(weight=dfc.weight.detach(), bias=dfc.bias.detach()))

    def dfc_step():
        grads = torch.autograd.grad(dfc(v), (v, dfc.weight, dfc.bias), gz)
        dfc.end_step()
        return grads

    def fc_step():
        return torch.autograd.grad(fc(v), (v, fc.weight, fc.bias), gz)

    return {"DFC": dfc_step, "FC": fc_step}


def train_step_fns(B, d, C, keep, device, gen, interval=1, compile=False):
    """`interval` full SGD steps of train.py's network: nets.Net (nets.py "mlp" backbone of width
    d on (1, 28, 28) inputs, make_head "dfc" or "fc"), CE, step; the DFC head attached as train.py
    attaches it, so the mask is recomputed once per call (--dcm-interval `interval`): the time per
    call is the amortised cost. Each side has its own copy of the model and optimizer;
    compile=True: each network is torch.compile'd (bench/step_ratio.py --compile).
    -> {"DFC": fn, "FC": fn}.
    """
    x = torch.randn(B, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, C, (B,), generator=gen).to(device)
    with torch.random.fork_rng(devices=[]):   # seeded init without touching the caller's RNG
        torch.manual_seed(0)
        backbone, head = nets.MLP((1, 28, 28), width=d), nn.Linear(d, C)
    return {"DFC": _make_steps(backbone, head, x, y, keep, device, interval, dcm=True, compile=compile),
            "FC": _make_steps(backbone, head, x, y, keep, device, interval, dcm=False, compile=compile)}


def _make_steps(backbone, head, x, y, keep, device, interval, dcm, compile=False):
    """One closure = `interval` optimizer steps on a private nets.Net of backbone and head."""
    with torch.random.fork_rng(devices=[]):   # the DFC head's own init is overwritten below
        top = nets.make_head("dfc", head.in_features, head.out_features, keep=keep,
                             interval=interval) if dcm else copy.deepcopy(head)
    if dcm:
        top.load_state_dict(head.state_dict(), strict=False)   # the same weights as the FC side
    net = nets.Net(copy.deepcopy(backbone), top).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    if dcm:
        layers.attach(net, opt)
    run = torch.compile(net) if compile else net

    def steps():
        for _ in range(interval):
            loss = F.cross_entropy(run(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return steps


def module_step_fns(B, d, C, keep, device, gen):
    """One SGD step (fwd + bwd + optimizer step) of nets.py "mlp" (width d) + a head module:
    dcm_ref.DCMLinear made by dcm_ref.convert and attached by dcm_ref.attach (its forward
    recomputes the mask from the batch, every step) vs the plain nn.Linear.
    -> {"DCMLinear": fn, "nn.Linear": fn}, each with its own model and optimizer.
    """
    x = torch.randn(B, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, C, (B,), generator=gen).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nets.MLP((1, 28, 28), width=d), nn.Linear(d, C))
    fns = {}
    for name in ("DCMLinear", "nn.Linear"):
        net = copy.deepcopy(model).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        if name == "DCMLinear":
            dcm_ref.convert(net, "1", keep=keep)
            dcm_ref.attach(net, opt)
        fns[name] = _module_step(net, opt, x, y)
    return fns


def _module_step(net, opt, x, y):
    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def score_fns(B, d, C, device, gen):
    """FC edge scores, no grad: -> {"literal": fn, "fast": fn} (Eq. 2 as written vs |W|·std_b v)."""
    v = torch.randn(B, d, generator=gen).to(device)
    w = torch.randn(C, d, generator=gen).to(device)
    return {"literal": lambda: dcm_ref.edge_scores_literal(v, w),
            "fast": lambda: dcm_ref.edge_scores(v, w)}


def _kan_setup(B, d, C, device, gen):
    params = {k: t.to(device) for k, t in kan.kan_init(d, C, generator=gen).items()}
    x = (torch.rand(B, d, generator=gen) * 2 - 1).to(device)   # inside grid_range: all bases live
    return params, x


def kan_fns(B, d, C, device, gen):
    """KAN layer d -> C fwd+bwd (grads of x and coefficients) with each basis, and nn.Linear.

    -> {"cox": fn, "closed": fn, "linear": fn}.
    """
    params, x = _kan_setup(B, d, C, device, gen)
    params = {k: t.requires_grad_(k != "grid") for k, t in params.items()}
    x.requires_grad_()
    wrt = (x, params["base_weight"], params["spline_weight"])
    lin = nn.Linear(d, C).to(device)
    gy = torch.randn(B, C, generator=gen).to(device)

    def kan_step(basis):
        return lambda: torch.autograd.grad(kan.kan_forward(params, x, basis=basis), wrt, gy)

    return {"cox": kan_step("cox"), "closed": kan_step("closed"),
            "linear": lambda: torch.autograd.grad(lin(x), (x, lin.weight, lin.bias), gy)}


def dkan_score_fns(B, d, C, device, gen):
    """DKAN edge scores, no grad: -> {"literal": fn, "fast": fn} (std_b φ_jk vs sqrt(cᵀΣc))."""
    params, x = _kan_setup(B, d, C, device, gen)
    return {"literal": lambda: kan.kan_edge_scores_literal(params, x),
            "fast": lambda: kan.kan_edge_scores(params, x)}


# ----------------------------------------------------------------------------- rows of the speed table

def fmt_time(seconds):
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def fmt_bytes(n):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def verdict(ratio, op, bound, applies=True):
    """Target cell: 'op bound: met' / 'NOT met', or '—' where docs/design.md sets no target."""
    if not applies:
        return "—"
    ok = ratio <= bound if op == "≤" else ratio >= bound
    return f"{op} {bound:g}: {'met' if ok else 'NOT met'}"


def row(comparison, shape, a, b, ratio, target="—"):
    """One table row; ratio is a float (A / B) or a string such as 'skipped: ...'."""
    cell = f"{ratio:.3g}" if isinstance(ratio, float) else ratio
    return {"comparison": comparison, "shape": "(" + ", ".join(map(str, shape)) + ")",
            "a": a, "b": b, "ratio": cell, "target": target}


def timed_rows(fns, pairs, shape, device, cfg, targets):
    """Time fns interleaved; one row per (comparison, A name, B name) in pairs.

    targets: comparison -> (op, bound, applies) or absent for no target.
    """
    rounds = pick_rounds(fns, device, cfg["budget"], cfg["rounds"])
    times = time_interleaved(fns, device, rounds)
    out = []
    for comparison, a, b in pairs:
        ratio = paired_ratio(times[a], times[b])
        target = verdict(ratio, *targets[comparison]) if comparison in targets else "—"
        out.append(row(comparison, shape,
                       f"{a} {fmt_time(statistics.median(times[a]))}",
                       f"{b} {fmt_time(statistics.median(times[b]))}", ratio, target))
    return out


def literal_rows(kind, fns, shape, device, cfg, dtype_bytes=4):
    """Time and memory rows of a literal-vs-fast score comparison (kind "score" or "dkan"),
    or skipped rows when the literal form would need more than --max-literal-gb."""
    B, d, C = shape
    names = {"score": ("score literal / fast", 20.0), "dkan": ("DKAN score literal / fast", 6.0)}
    name, bound = names[kind]
    need = LITERAL_FACTOR[kind] * B * C * d * dtype_bytes
    if need > cfg["max_literal_gb"] * 1e9:
        why = f"skipped: literal needs ≈ {need / 1e9:.1f} GB > --max-literal-gb {cfg['max_literal_gb']:g}"
        return [row(f"{name}: time", shape, "—", "—", why), row(f"{name}: peak memory", shape, "—", "—", why)]
    at_target = tuple(shape) == TARGET_SHAPE
    out = timed_rows(fns, [(f"{name}: time", "literal", "fast")], shape, device, cfg,
                     {f"{name}: time": ("≥", bound, at_target)})
    (lit_peak, _), (fast_peak, fast_big) = (peak_memory(fns[k], device) for k in ("literal", "fast"))
    bcd = B * C * d * dtype_bytes
    # The memory target is for the FC score; the DKAN fast form holds Φ (B·d·(1+G')
    # float64), which can exceed B·C·d for small C, and is judged by time only.
    target = "—" if kind == "dkan" else (
        f"fast allocates no B×C×d ({fmt_bytes(fast_big)} largest < {fmt_bytes(bcd)}): "
        f"{'met' if fast_big < bcd else 'NOT met'}")
    out.append(row(f"{name}: peak memory", shape, f"literal {fmt_bytes(lit_peak)}",
                   f"fast {fmt_bytes(fast_peak)}", lit_peak / max(fast_peak, 1), target))
    return out


def speed_rows(shape, device, cfg):
    """Every comparison at one (B, d, C); yields each comparison's rows as soon as they are measured."""
    B, d, C = shape
    gen = torch.Generator().manual_seed(0)
    at_target = tuple(shape) == TARGET_SHAPE
    yield from timed_rows(dfc_head_fns(B, d, C, cfg["keep"], device, gen),
                      [("DFC / FC head fwd+bwd", "DFC", "FC")], shape, device, cfg,
                      {"DFC / FC head fwd+bwd": ("≤", 1.05, True)})
    yield from timed_rows(train_step_fns(B, d, C, cfg["keep"], device, gen),
                       [(STEP, "DFC", "FC")], shape, device, cfg, {STEP: ("≤", 1.05, True)})
    yield from timed_rows(train_step_fns(B, d, C, cfg["keep"], device, gen, interval=STEP_INTERVAL),
                       [(STEPS, "DFC", "FC")], shape, device, cfg, {})
    yield from timed_rows(module_step_fns(B, d, C, cfg["keep"], device, gen),
                       [(MODULE_STEP, "DCMLinear", "nn.Linear")], shape, device, cfg, {})
    yield from literal_rows("score", score_fns(B, d, C, device, gen), shape, device, cfg)
    yield from timed_rows(kan_fns(B, d, C, device, gen),
                       [("KAN closed / Cox–de Boor fwd+bwd", "closed", "cox"),
                        ("KAN closed / nn.Linear fwd+bwd", "closed", "linear")], shape, device, cfg,
                       {"KAN closed / Cox–de Boor fwd+bwd": ("≤", 0.4, at_target)})
    yield from literal_rows("dkan", dkan_score_fns(B, d, C, device, gen), shape, device, cfg)


COLUMNS = (("comparison", "comparison (A / B)"), ("shape", "(B, d, C)"), ("a", "A"), ("b", "B"),
           ("ratio", "A / B"), ("target", "target"))


def markdown_table(rows):
    """rows (dicts keyed by COLUMNS) -> a GitHub markdown table, one line per row."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    return "\n".join(lines + [md_row(r) for r in rows])


def md_row(r):
    return "| " + " | ".join(r[key] for key, _ in COLUMNS) + " |"


def machine_line(device):
    """CPU model, cores, torch version, threads (and the GPU name on CUDA)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {torch.multiprocessing.cpu_count()} cores{gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), device {device.type}")


# ----------------------------------------------------------------------------- CLI

def speed_main(args):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda given, but torch sees no CUDA device")
    if not 0 < args.keep <= 1:
        raise SystemExit(f"bench: --keep must be in (0, 1], got {args.keep}")
    if not (args.budget > 0 and args.max_literal_gb >= 0):
        raise SystemExit(f"bench: --budget must be > 0 and --max-literal-gb >= 0, "
                         f"got {args.budget} and {args.max_literal_gb}")
    if args.out:   # before the measurement, not after it: the table would be lost
        folder = os.path.dirname(args.out) or "."
        if not os.path.isdir(folder) or os.path.isdir(args.out):
            raise SystemExit(f"bench: --out {args.out}: " + (f"no folder {folder}" if not os.path.isdir(folder)
                                                             else "is a folder, not a file"))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = {"keep": args.keep, "max_literal_gb": args.max_literal_gb,
           "budget": 0.02 if args.quick else args.budget, "rounds": (3, 5) if args.quick else ROUNDS}
    head = (f"Machine: {machine_line(device)}.\n"
            f"Command: python -m bench {' '.join(args.argv)}\n"
            "Ratios: median over interleaved rounds of t_A / t_B from the same round.\n\n"
            + markdown_table([]) + "\n")
    if args.out:   # written as it is measured: a run stopped by a time limit keeps its finished rows
        with open(args.out, "w") as f:
            f.write(head)
    rows = []
    for shape in (QUICK_SHAPES if args.quick else SHAPES):
        for r in speed_rows(shape, device, cfg):
            rows.append(r)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(md_row(r) + "\n")
        print(f"bench: done {shape}", file=sys.stderr, flush=True)
    print(head + "".join(md_row(r) + "\n" for r in rows), end="")
