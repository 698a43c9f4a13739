"""DCM heads as nn.Modules: the one DCM step that train.py and the drop-in use.

Zhang et al., "Combating Noisy Labels via Dynamic Connection Masking" (arXiv 2508.09697).
DCMLinear is the DFC head (an nn.Linear with DCM), DKANLinear the DKAN head, KANLinear a
plain KAN layer; convert() swaps the nn.Linear of a model for a DCMLinear, attach() ends the
DCM step at every optimizer.step(). The formulas are dcm_ref.py's and kan.py's pure functions;
this file only holds their state. Also importable as dcm_ref.DCMLinear / convert / attach and
kan.KANLinear / DKANLinear.

    head = dcm_ref.convert(model, "fc", keep=0.1)   # model.fc -> DCMLinear, the SAME Parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dcm_ref.attach(model, opt)                      # the schedule advances at every opt.step()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)         # this batch is scored, masked and trained on
        opt.zero_grad(); loss.backward(); opt.step()

The DCM step (Fig. 2, Eq. 2; docs/design.md §2), DCMModule._train_mask, in every training forward:
  phase = dcm_ref.schedule_phase(optimizer steps so far, interval, warmup)   (host integers)
  warm-up, or hold with stats="batch": the current mask, nothing to score;
  otherwise  moments of this batch's head input (float64; summed over ranks, so every rank
             picks the mask of the global batch) -> dcm_ref.mask_step: on "update",
             M = topk_mask(scores(moments or the pool since the last update), keep);
  logits = head(features, M): the mask a forward applies is scored on that forward's batch.
One mask per optimizer step: the step's first training forward chooses it; later forwards of
the step (gradient accumulation, a second view) apply it, as a hold step does (with
stats="interval" their moments join the next pool). end_step() (attach's optimizer-step hook)
advances the step count once per optimizer step; with --dcm-freeze (attach(freeze=True)) it
first restores the entries the step's mask dropped. Eval mode: the full head (eval_mask="full",
the paper's default) or the last mask ("masked"). Under torch.compile, attach() is required:
the "no end of step" warning counts forwards in eager mode only.
"""
import contextlib
import warnings
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

import dcm_ref
import kan

Tensor = torch.Tensor
EVAL_MASKS = ("full", "masked")
FORGOT_AFTER = 100   # training forwards without end_step() before the "call attach()" warning


def _distributed() -> bool:
    """Whether torch.distributed has a process group in this process."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def all_sum_moments(m: dcm_ref.Moments) -> dcm_ref.Moments:
    """Sum a moment tuple over ranks (one all-reduce) when torch.distributed is initialised, so
    every rank scores the global batch (docs/multiprocess.md). Identity in a single process."""
    if not _distributed():
        return m
    import torch.distributed as dist
    flat = torch.cat([t.reshape(-1) for t in m])
    dist.all_reduce(flat)
    return tuple(c.view_as(t) for c, t in zip(flat.split([t.numel() for t in m]), m))


class DCMModule(nn.Module):
    """The DCM schedule as module state; subclasses supply the head math.

    Buffers (state_dict, .to(), DDP): mask (C, d) 0/1, dcm_step, dcm_updates (int64),
    dcm_change (1 − Jaccard at the last update), pooled_n/_s1/_s2 (the stats="interval" pool;
    the float64 ones stay float64 under .half()). Host copies of the step count decide the
    phase, so a compiled forward never reads the device. all_reduce: Moments -> Moments,
    summed over ranks (train.py sets its own, which reports a lost peer in one line).
    Subclass hooks: _features(x2d) -> feats, _moments(feats), _scores(m) -> (C, d) (Eq. 2), the
    ablations' _magnitude_scores() and _feature_scores(m) -> (C, d) (_score picks one),
    _logits(feats, mask) -> (B, C); _MASKED: the parameters whose (C, d, ...) entries the mask gates.
    """
    _F64 = ("dcm_change", "pooled_n", "pooled_s1", "pooled_s2")
    _MASKED: Tuple[str, ...] = ()

    def _init_schedule(self, shape, stat_shapes, keep, scope, interval, warmup, stats, eval_mask, device,
                       score="std", seed=0):
        dcm_ref._check_score(score)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed: expected an integer (the random score's seed), got {seed!r}")
        self.score, self.seed = score, seed
        dcm_ref._check_keep(keep)
        dcm_ref._check_scope(scope)
        dcm_ref._check_schedule(interval, warmup, stats)
        if eval_mask not in EVAL_MASKS:
            raise ValueError(f"eval_mask: expected one of {EVAL_MASKS}, got {eval_mask!r}")
        self.keep, self.scope, self.interval, self.warmup = keep, scope, interval, warmup
        self.stats, self.eval_mask, self.all_reduce = stats, eval_mask, all_sum_moments
        f64 = dict(dtype=torch.float64, device=device)
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.register_buffer("dcm_step", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("dcm_updates", torch.zeros((), dtype=torch.long, device=device))
        # The two float64 scalars are (1,), not 0-dim: torch 2.13's inductor drops in-place writes to
        # 0-dim float64 buffers on CPU (tests/test_modules.py, the compiled stats="interval" case).
        self.register_buffer("dcm_change", torch.zeros(1, **f64))
        for name, s in zip(("pooled_n", "pooled_s1", "pooled_s2"), ((1,),) + tuple(stat_shapes)):
            self.register_buffer(name, torch.zeros(s, **f64))
        self._forwards, self._warned, self._attached = 0, False, False
        self._before_step: Optional[list] = None   # attach(freeze=True): masked parameters before the step
        self._set_counts(0, 0)

    @property
    def step(self) -> int:
        """Optimizer steps taken (end_step calls)."""
        return self._step

    @property
    def updates(self) -> int:
        """Mask recomputations so far (update steps that had a training forward)."""
        return self._updates

    def _set_counts(self, step: int, updates: int) -> None:
        self._step, self._updates = step, updates
        self._phase = dcm_ref.schedule_phase(step, self.interval, self.warmup)

    def forward(self, x: Tensor) -> Tensor:
        """x: (*, d) -> (*, C). Train mode: the DCM step on this batch, then the masked head.
        Eval mode: the full head (eval_mask="full") or the last mask ("masked")."""
        x2 = x.reshape(-1, x.shape[-1])
        feats = self._features(x2)
        if self.training:
            if not torch.compiler.is_compiling():   # a Python counter: kept out of compiled graphs
                self._count_forward()
            empty = x2.shape[0] == 0 and not _distributed()   # with ranks, every rank joins the all-reduce
            mask = self.mask if empty else self._train_mask(feats)
        else:
            mask = self.mask if self.eval_mask == "masked" else None
        return self._logits(feats, mask).reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def _train_mask(self, feats: Tensor) -> Tensor:
        """The DCM step of one training forward (Fig. 2, Eq. 2) -> the (C, d) mask it applies.

        The first training forward of an update step selects the mask; later forwards of the same
        optimizer step (gradient accumulation, a second view) apply it as a hold step would."""
        if self._phase == "warmup" or (self._phase == "hold" and self.stats == "batch"):
            return self.mask
        m = self.all_reduce(self._moments(feats))
        mask, pool, change = dcm_ref.mask_step(self._phase, self.mask, m, self._pool(), self._score,
                                               self.keep, self.scope, self.stats)
        if self.stats == "interval":
            for buf, t in zip((self.pooled_n, self.pooled_s1, self.pooled_s2), pool or (None,) * 3):
                buf.zero_() if t is None else buf.copy_(t.view(buf.shape))
        if change is not None:
            self.mask = mask.contiguous()   # rebound, not copied into: a mask a forward saved for backward stays as it was
            self.dcm_change.copy_(change)   # 0-dim into (1,)
            self._phase = "hold"      # this step's mask is chosen
        return mask

    def _score(self, m: dcm_ref.Moments) -> Tensor:
        """The edge scores this module selects by (score=): Eq. 2 or an ablation (dcm_ref.SCORES).
        m: pooled moments -> (C, d). "random" draws from (seed, the dcm_updates buffer): a new
        subset at every update, the same on every rank and after a resume, no host read."""
        if self.score == "random":
            return dcm_ref.random_scores(tuple(self.mask.shape), self.seed, self.dcm_updates)
        if self.score == "magnitude":
            return self._magnitude_scores()
        if self.score == "feature":
            return self._feature_scores(m)
        return self._scores(m)

    def _pool(self) -> Optional[dcm_ref.Moments]:
        """The stats="interval" pool as dcm_ref's moments (n 0-dim; zeros = empty), else None."""
        return (self.pooled_n.view(()), self.pooled_s1, self.pooled_s2) if self.stats == "interval" else None

    @torch.no_grad()
    def end_step(self) -> None:
        """End this optimizer step (attach() calls it after every optimizer.step()): the step
        count advances, and the next training forward takes the next step's phase. No device read."""
        self._forwards = 0
        updated = self._phase != dcm_ref.schedule_phase(self._step, self.interval, self.warmup)   # "update" -> "hold"
        self._set_counts(self._step + 1, self._updates + updated)
        self.dcm_step.fill_(self._step)
        self.dcm_updates.fill_(self._updates)

    def _count_forward(self) -> None:
        self._forwards += 1
        if self._forwards >= FORGOT_AFTER and not self._warned:
            self._warned = True
            warnings.warn(f"{type(self).__name__}: {self._forwards} training forwards and no end of step; the DCM "
                          "schedule advances once per optimizer step: call dcm_ref.attach(model, optimizer) once, "
                          "or .end_step() after every optimizer.step()", stacklevel=3)

    def mask_state(self) -> dcm_ref.MaskState:
        """The schedule state as dcm_ref's pure functions take it (copies; reads the pool size: a host sync)."""
        pool = (self.pooled_n.view(()), self.pooled_s1, self.pooled_s2)
        pooled = tuple(t.clone() for t in pool) if float(self.pooled_n) != 0 else None
        return dcm_ref.MaskState(self.mask.clone(), self._step, pooled, self._updates, self.dcm_change.view(()).clone())

    def _load_from_state_dict(self, *load_args, **load_kwargs):
        super()._load_from_state_dict(*load_args, **load_kwargs)
        self._set_counts(int(self.dcm_step), int(self.dcm_updates))   # new buffer values: one read at load

    @torch.no_grad()
    def _save_masked_params(self) -> None:
        """Before optimizer.step() (attach(..., freeze=True)): copy the parameters the mask gates."""
        self._before_step = [getattr(self, k).detach().clone() for k in self._MASKED]

    @torch.no_grad()
    def _restore_masked(self) -> None:
        """After optimizer.step(): the entries this step's mask dropped get their values from before
        the step back (dcm_ref.freeze_masked, --dcm-freeze): weight decay and momentum leave them unchanged."""
        if self._before_step is None:
            return
        for k, before in zip(self._MASKED, self._before_step):
            p = getattr(self, k)
            m = self.mask.reshape(self.mask.shape + (1,) * (p.dim() - 2)).expand_as(p)
            p.copy_(dcm_ref.freeze_masked(p, before, m))
        self._before_step = None

    def _apply(self, fn, recurse=True):
        # .half()/.to(dtype) would round the float64 statistics: they follow the device only.
        kept = {k: self._buffers[k] for k in self._F64}
        out = super()._apply(fn, recurse)
        for k, t in kept.items():
            self._buffers[k] = t.to(self._buffers[k].device)
        return out

    def extra_repr(self) -> str:
        score = "" if self.score == "std" else f", score={self.score!r}" + (f", seed={self.seed}" if self.score == "random" else "")
        return (f"keep={self.keep}, scope={self.scope!r}, interval={self.interval}, warmup={self.warmup}, "
                f"stats={self.stats!r}, eval_mask={self.eval_mask!r}" + score)


class DCMLinear(DCMModule):
    """nn.Linear with Dynamic Connection Masking (the DFC head): z = v (W⊙M)ᵀ + b.

    x: (*, in_features) -> (*, out_features); weight (C, d), bias (C,) as nn.Linear (same init,
    same names; an nn.Linear state dict lacks the DCM buffers: load it with strict=False, or
    into the nn.Linear before convert()). Scores: Eq. 2 from the batch moments
    (dcm_ref.scores_from_moments), or an ablation's (score="random" with its seed, "magnitude",
    "feature": dcm_ref.SCORES); mask: dcm_ref.topk_mask(keep, scope). Masked edges get
    exactly zero gradient.
    """
    _MASKED = ("weight",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, keep: float = 0.1,
                 scope: str = "row", interval: int = 1, warmup: int = 0, stats: str = "batch",
                 eval_mask: str = "full", score: str = "std", seed: int = 0, device=None, dtype=None):
        super().__init__()
        lin = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)   # PyTorch's init
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = lin.weight, lin.bias
        self._init_schedule((out_features, in_features), ((in_features,), (in_features,)),
                            keep, scope, interval, warmup, stats, eval_mask, device, score, seed)

    def _features(self, x: Tensor) -> Tensor:
        return x

    def _moments(self, v: Tensor) -> dcm_ref.Moments:
        return dcm_ref.moments(v)

    def _scores(self, m: dcm_ref.Moments) -> Tensor:
        return dcm_ref.scores_from_moments(m, self.weight)

    def _magnitude_scores(self) -> Tensor:
        return dcm_ref.magnitude_scores(self.weight)

    def _feature_scores(self, m: dcm_ref.Moments) -> Tensor:
        return dcm_ref.feature_scores(dcm_ref.std_from_moments(m), self.out_features)

    def _logits(self, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        return dcm_ref.masked_linear(v, self.weight, self.bias, mask)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, " + super().extra_repr())


# ----------------------------------------------------------------------------- KAN layers (kan.py)

def _kan_parameters(module, in_features, out_features, grid_size, order, grid_range, device, dtype):
    """Register kan.kan_init's tensors on `module`: Parameters base_weight, spline_weight; buffer grid."""
    p = kan.kan_init(in_features, out_features, grid_size, order, grid_range,
                     dtype=dtype or torch.get_default_dtype(), device=device)
    module.base_weight = nn.Parameter(p["base_weight"])
    module.spline_weight = nn.Parameter(p["spline_weight"])
    module.register_buffer("grid", p["grid"])
    module.in_features, module.out_features = in_features, out_features


def _kan_repr(module):
    g = module.spline_weight.shape[2]
    order = module.grid.shape[1] - g - 1
    return (f"in_features={module.in_features}, out_features={module.out_features}, "
            f"grid_size={g - order}, order={order}")


class KANLinear(nn.Module):
    """A KAN layer y_j = Σ_k φ_jk(x_k) (kan.kan_forward), x: (*, in_features) -> (*, out_features).

    layer_norm=False: no input normalisation (inputs outside grid_range only reach the silu
    part); True: the non-affine layer norm first, i.e. DKANLinear's head without the mask
    (train.py's --head kan).
    """

    def __init__(self, in_features, out_features, grid_size=5, order=3, grid_range=(-1.0, 1.0),
                 layer_norm=False, device=None, dtype=None):
        super().__init__()
        _kan_parameters(self, in_features, out_features, grid_size, order, grid_range, device, dtype)
        self.layer_norm = layer_norm

    def params(self):
        """The params dict of kan.py's functions (the module's own tensors, not copies)."""
        return {"grid": self.grid, "base_weight": self.base_weight, "spline_weight": self.spline_weight}

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        y = kan.dkan_forward(self.params(), x2) if self.layer_norm else kan.kan_forward(self.params(), x2)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return _kan_repr(self) + f", layer_norm={self.layer_norm}"


class DKANLinear(DCMModule):
    """The DKAN head: non-affine layer norm, KAN, DCM mask on the edge coefficients.

    x: (*, in_features) -> (*, out_features). Scores S[j,k] = sqrt(c_jkᵀ Cov_k c_jk) from the
    feature moments (n, ΣΦ, ΣΦΦᵀ) (kan.kan_scores_from_moments); the ablations' scores
    (score=, seed=) and the schedule arguments as DCMLinear.
    """
    _MASKED = ("base_weight", "spline_weight")

    def __init__(self, in_features, out_features, grid_size=5, order=3, grid_range=(-1.0, 1.0),
                 keep=0.1, scope="row", interval=1, warmup=0, stats="batch", eval_mask="full",
                 score="std", seed=0, device=None, dtype=None):
        super().__init__()
        _kan_parameters(self, in_features, out_features, grid_size, order, grid_range, device, dtype)
        f = 1 + grid_size + order
        self._init_schedule((out_features, in_features), ((in_features, f), (in_features, f, f)),
                            keep, scope, interval, warmup, stats, eval_mask, device, score, seed)

    params = KANLinear.params

    def _features(self, x):
        return kan.dkan_features(self.params(), x)

    def _moments(self, phi):
        return kan.kan_moments(phi)

    def _scores(self, m):
        return kan.kan_scores_from_moments(m, self.params())

    def _magnitude_scores(self):
        return kan.kan_magnitude_scores(self.params())

    def _feature_scores(self, m):
        return kan.kan_feature_scores(m, self.out_features)

    def _logits(self, phi, mask):
        return kan.kan_forward_features(self.params(), phi, mask)

    def extra_repr(self):
        return _kan_repr(self) + ", " + super().extra_repr()


# ----------------------------------------------------------------------------- convert, attach

def dcm_modules(model: nn.Module) -> Tuple[DCMModule, ...]:
    """The DCM modules of `model` (each once; through DDP and torch.compile wrappers)."""
    return tuple(dict.fromkeys(m for m in model.modules() if isinstance(m, DCMModule)))


@contextlib.contextmanager
def eval_mask(model: nn.Module, which: str):
    """Within the block, eval-mode forwards of every DCM module of `model` use `which`
    ("masked": the last training mask, e.g. for a gradient probe; "full"); restored after."""
    if which not in EVAL_MASKS:
        raise ValueError(f"which: expected one of {EVAL_MASKS}, got {which!r}")
    mods = dcm_modules(model)
    before = [m.eval_mask for m in mods]
    for m in mods:
        m.eval_mask = which
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.eval_mask = b


def _resolve(model: nn.Module, name: str):
    """Dotted path -> (parent module, key, child); an integer key indexes nn.Sequential (-1 = last)."""
    parent, parts = model, name.split(".")
    for i, part in enumerate(parts):
        indexable = isinstance(parent, (nn.Sequential, nn.ModuleList))
        if indexable and part.lstrip("-").isdigit() and -len(parent) <= int(part) < len(parent):
            key, child = int(part), parent[int(part)]
        elif part in parent._modules:
            key, child = part, parent._modules[part]
        else:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"name: the model has no submodule {name!r}; its nn.Linear layers are "
                             f"{', '.join(linears) or 'none'}")
        if i < len(parts) - 1:
            parent = child
    return parent, key, child


def convert(model: nn.Module, name: str = "fc", **dcm) -> DCMLinear:
    """Replace the nn.Linear at `name` in `model` with a DCMLinear holding the SAME Parameters.

    name: dotted path, e.g. "fc" (torchvision ResNet), "head" or "head.fc" (timm), "classifier.1";
    an integer indexes an nn.Sequential, "-1" its last layer. dcm: DCMLinear's keyword
    arguments (keep, scope, interval, warmup, stats, eval_mask, score, seed). The weight and bias Parameter
    objects are reused, so an optimizer built before convert() still trains them; the global
    random state is left as it was. Mutates `model` in place; returns the new module.
    """
    parent, key, old = _resolve(model, name)
    if type(old) is not nn.Linear:
        raise ValueError(f"name: {name!r} is a {type(old).__name__}, expected an nn.Linear")
    cuda = [old.weight.device] if old.weight.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):   # the throwaway init of new's own weights draws no number of the caller's
        new = DCMLinear(old.in_features, old.out_features, bias=old.bias is not None,
                        device=old.weight.device, **dcm)
    new.weight, new.bias = old.weight, old.bias
    new.train(old.training)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)
    return new


class Attachment(NamedTuple):
    """What attach() installed: the optimizer hook handles and the DCM modules they step."""
    handles: tuple
    modules: tuple

    def remove(self) -> None:
        """Uninstall the hooks; the modules can be attached again (to another optimizer)."""
        for handle in self.handles:
            handle.remove()
        for m in self.modules:
            m._attached = False


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, freeze: bool = False) -> Attachment:
    """End the DCM step of every DCM module of `model` at each optimizer.step() (a step post-hook).

    freeze=True is train.py's --dcm-freeze: a step pre-hook copies the masked parameters and
    the post-hook puts back the entries that step's mask dropped (dcm_ref.freeze_masked), so
    a stock optimizer's weight decay and momentum leave them exactly unchanged. A step that
    GradScaler skips (inf/NaN gradients) calls no hook, so the schedule waits too. Raises
    ValueError if the model has no DCM module or one is already attached (two hooks would
    advance it twice per step). Returns an Attachment; .remove() undoes it.
    """
    mods = dcm_modules(model)
    if not mods:
        raise ValueError("model: no DCM module (DCMLinear, DKANLinear); use dcm_ref.convert(model, name) first")
    if any(m._attached for m in mods):
        raise ValueError("model: a DCM module is already attached to an optimizer; remove() that Attachment first")
    if not isinstance(freeze, bool):
        raise ValueError(f"freeze: expected True or False, got {freeze!r}")

    def before(opt, step_args, step_kwargs):
        for m in mods:
            m._save_masked_params()

    def after(opt, step_args, step_kwargs):
        for m in mods:
            m._restore_masked()
            m.end_step()

    handles = ((optimizer.register_step_pre_hook(before),) if freeze else ()) + (optimizer.register_step_post_hook(after),)
    for m in mods:
        m._attached = True
    return Attachment(handles, mods)
