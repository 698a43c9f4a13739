"""What a run measures each epoch: test (and validation) accuracy, the training-set pass of
Fig. 4 (fit of the noisy labels vs the clean ones), the gradient probe of Fig. 3 (cosine
between noisy- and clean-label gradients), the masks of Fig. 5, and the run's summary.
Zhang et al., arXiv 2508.09697; the conventions are in docs/design.md §8.

    probe = grad_probe(d, seed, track=None, dataset=name)  # d: a data.TrainData; fixed corrupted samples, or None
    m = evaluate(st, d, train_pass=True)                    # st: a runfolder.TrainState; test_acc, train_acc_noisy, ...
    m.update(mask_metrics(st.nets[0].head, changes))        # kept, mask_change, mask_updates
    m.update(grad_error_metrics(st, d, probe, loss_fn, loss_name))
"""
import datetime
import math
import os
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import data
import dcm_ref
import distributed
import layers
import train_cli


# ============================================================================= gradient error (Fig. 3): the functions
# Gradient error caused by noisy labels: on samples whose label was corrupted,
# compare the gradient of the training loss under the noisy label ỹ with the one
# under the clean label y. DCM's claim is that masking the head shrinks the error
# that reaches the backbone (Fig. 3 of the paper): in closed form for an FC head with CE
# (feature_grad_error and its bound), and by autograd for any head and loss. The section
# needs only math, typing, torch and torch.nn.functional; copy it with its two checks.

Tensor = torch.Tensor


def feature_grad_error(w: Tensor, mask: Tensor, y: Tensor, y_noisy: Tensor) -> Tensor:
    """Per-sample error of the CE gradient w.r.t. the features, noisy minus clean label.

    For z = v (W⊙M)ᵀ + b, ∂CE/∂z = p − e_label, so ∂CE/∂v|ỹ − ∂CE/∂v|y
    = (W⊙M)ᵀ(e_y − e_ỹ) = (W⊙M)[y] − (W⊙M)[ỹ]: independent of v and p.
    w, mask: (C, d), y, y_noisy: (B,) class indices -> (B, d).
    """
    dcm_ref._check_2d("w", w, "(C, d)")
    dcm_ref._check_mask(mask, w)
    for name, labels in (("y", y), ("y_noisy", y_noisy)):
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"{name}: expected (B,) integer class indices, got {got}")
    wm = w * mask
    return wm[y] - wm[y_noisy]


def feature_grad_error_bound(w: Tensor, mask: Tensor) -> float:
    """Bound on ‖feature_grad_error‖₂ for any sample: 2·sqrt(k)·max|W⊙M|, k = most kept edges in a row.

    Why 2·sqrt(k) and not sqrt(2k): the error is a − c with a = (W⊙M)[y],
    c = (W⊙M)[ỹ], each with ≤ k non-zeros bounded by m = max|W⊙M|, so
    ‖a − c‖ ≤ ‖a‖ + ‖c‖ ≤ 2·sqrt(k)·m, attained when both rows keep the same
    k edges with opposite signs. sqrt(2k)·m holds only if no kept entry of a
    meets one of opposite sign in c (e.g. disjoint supports); with d = k = 1,
    w = [[1], [−1]] the error is 2 > sqrt(2). The bound shrinks with nested
    masks (k and m cannot grow); the error itself need not (cancelling edges).
    w, mask: (C, d) -> float.
    """
    dcm_ref._check_2d("w", w, "(C, d)")
    dcm_ref._check_mask(mask, w)
    k = int((mask != 0).sum(dim=1).max())
    m = float((w * mask).abs().max())
    return 2.0 * math.sqrt(k) * m


class GradError(NamedTuple):
    """Result of label_gradient_error on a probe batch of B samples.

    cos_params: cosine between ∂ΣL(z, ỹ)/∂θ and ∂ΣL(z, y)/∂θ over all probed θ (float);
    cos_feat: (B,) per-sample cosine between ∂L_b/∂v_b under ỹ and under y (float64);
    err_feat: (B,) per-sample ‖∂L_b/∂v_b|ỹ − ∂L_b/∂v_b|y‖₂ (float64).
    """
    cos_params: float
    cos_feat: Tensor
    err_feat: Tensor


def gradient_cosine(g_a: Sequence[Optional[Tensor]], g_b: Sequence[Optional[Tensor]]) -> float:
    """Cosine between two gradients, each a sequence of tensors (one per parameter).

    The tensors are flattened and concatenated, so this is the cosine in the joint
    parameter space. A None entry (unused parameter) counts as zeros. Float64;
    0.0 if either gradient is exactly zero (no direction to compare).
    g_a, g_b: sequences of matching shapes -> float in [-1, 1].
    """
    if len(g_a) != len(g_b) or len(g_a) == 0:
        raise ValueError(f"g_b: expected a non-empty sequence as long as g_a ({len(g_a)}), got length {len(g_b)}")
    dot, na, nb = 0.0, 0.0, 0.0
    for a, b in zip(g_a, g_b):
        if a is not None and b is not None and a.shape != b.shape:
            raise ValueError(f"g_b: expected shapes matching g_a, got {tuple(b.shape)} vs {tuple(a.shape)}")
        a = None if a is None else a.detach().double()
        b = None if b is None else b.detach().double()
        if a is not None and b is not None:
            dot += float((a * b).sum())
        na += 0.0 if a is None else float(a.square().sum())
        nb += 0.0 if b is None else float(b.square().sum())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / (math.sqrt(na) * math.sqrt(nb))))  # clip rounding past ±1


def label_gradient_error(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, v: Tensor,
                         params: Sequence[Tensor], y_noisy: Tensor, y_clean: Tensor) -> GradError:
    """Gradient error of Fig. 3 on one probe batch: noisy-label vs clean-label gradient.

    logits: (B, C), computed from the features v: (B, d) inside the autograd graph;
    params: the parameters to probe (e.g. the backbone's last layer, upstream of v);
    loss_fn(logits, target) -> (B,) per-sample loss; y_noisy, y_clean: (B,) labels.
    Uses torch.autograd.grad with retain_graph (the caller's graph survives) and
    touches no .grad, so an optimizer never sees these gradients.

    Per-sample feature gradients are read from ∂ΣL/∂v: exact when sample b's logits
    depend on v only through v_b (any row-wise head; a DCM mask is a constant). Put
    BatchNorm in eval mode so the parameter gradient does not mix samples. For CE on
    an FC head, err_feat[b] = ‖feature_grad_error(w, mask, y, ỹ)[b]‖ ≤ feature_grad_error_bound(w, mask).
    """
    dcm_ref._check_2d("logits", logits, "(B, C)")
    dcm_ref._check_2d("v", v, "(B, d)")
    B = logits.shape[0]
    for name, y in (("y_noisy", y_noisy), ("y_clean", y_clean)):
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (B,):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{name}: expected class indices of shape ({B},), got {got}")
    params = list(params)
    if not params:
        raise ValueError("params: expected at least one tensor to probe, got none")
    l_noisy, l_clean = loss_fn(logits, y_noisy), loss_fn(logits, y_clean)
    if tuple(l_noisy.shape) != (B,):
        raise ValueError(f"loss_fn: expected a per-sample loss of shape ({B},), got {tuple(l_noisy.shape)}")
    wrt = params + [v]
    g_n = torch.autograd.grad(l_noisy.sum(), wrt, retain_graph=True, allow_unused=True)
    g_c = torch.autograd.grad(l_clean.sum(), wrt, retain_graph=True, allow_unused=True)
    gv_n, gv_c = ((torch.zeros_like(v) if g is None else g).double() for g in (g_n[-1], g_c[-1]))
    cos_feat = F.cosine_similarity(gv_n, gv_c, dim=1, eps=1e-300)  # zero gradient -> 0, as gradient_cosine
    return GradError(gradient_cosine(g_n[:-1], g_c[:-1]), cos_feat, (gv_n - gv_c).norm(dim=1))


# ============================================================================= what a run measures (train.py)

PROBE_SIZE = 256  # Fig. 3 probe set: at most this many corrupted training samples


def eval_logits(net, x, mean, std, batch=1024, dd=distributed.Dist()):
    """Logits (N, C) of a uint8 tensor x (N, ...) in eval mode, without augmentation (a DCM head
    then uses its eval_mask: the full head, or its last mask for --dcm-eval masked).

    Multi-process: each rank computes a contiguous 1/W of the rows and every rank
    receives all N rows, so metrics computed from them agree on all ranks.
    """
    sizes = [len(part) for part in x.tensor_split(dd.world)]
    x = x.tensor_split(dd.world)[dd.rank]
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net(data.to_float(x[i:i + batch], mean, std)))
    net.train()
    if not out:  # a rank can get no rows of a set smaller than the world size
        out = [torch.zeros(0, net.head.out_features, device=x.device)]
    return distributed.all_gather_rows(torch.cat(out), sizes, dd)


TRAIN_METRICS = ("train_acc_noisy", "train_acc_clean", "conf_clean", "conf_noisy", "fit_noisy")


def train_metrics(net, d, dd):
    """One pass over the training set -> {TRAIN_METRICS}: accuracy against the noisy and the
    clean labels, mean p of the given label on clean vs noisy samples, fit of the noisy ones."""
    z = eval_logits(net, d.x, d.mean, d.std, dd=dd)
    pred, p = z.argmax(1), z.softmax(1)
    is_noisy = d.y_noisy != d.y
    p_given = p.gather(1, d.y_noisy[:, None])[:, 0]
    out = dict(train_acc_noisy=(pred == d.y_noisy).float().mean().item(),
               train_acc_clean=(pred == d.y).float().mean().item(),
               conf_clean=p_given[~is_noisy].mean().item() if (~is_noisy).any() else None,
               conf_noisy=p_given[is_noisy].mean().item() if is_noisy.any() else None,
               fit_noisy=(pred[is_noisy] == d.y_noisy[is_noisy]).float().mean().item() if is_noisy.any() else None)
    if not d.clean_known:  # y is y_noisy there: clean-label metrics would be fake
        out.update(train_acc_clean=None, conf_clean=None, conf_noisy=None, fit_noisy=None)
    return out


def train_eval_due(epoch, epochs, every):
    """Whether `epoch` of `epochs` evaluates the whole training set: every `every` epochs
    (--train-eval-every; 0 = never) and at the last."""
    return every > 0 and (epoch % every == 0 or epoch == epochs)


def evaluate(st, d, train_pass=True):
    """Test accuracy; with train_pass also train accuracy vs noisy/clean labels and confidence on
    clean vs noisy samples (else None). Identical on every rank: the logits are computed sharded
    and gathered whole."""
    net, dd = st.nets[0], st.dist
    test_acc = (eval_logits(net, d.x_test, d.mean, d.std, dd=dd).argmax(1) == d.y_test).float().mean()
    out = dict(test_acc=test_acc.item(), **(train_metrics(net, d, dd) if train_pass else dict.fromkeys(TRAIN_METRICS)))
    if d.clean_val is not None:  # Clothing1M's clean val keys / ILSVRC12 val for WebVision
        xc, yc, metric = d.clean_val
        out[metric] = (eval_logits(net, xc, d.mean, d.std, dd=dd).argmax(1) == yc).float().mean().item()
    if d.val is not None:
        zv = eval_logits(net, d.val[0], d.mean, d.std, dd=dd)
        out["val_acc_noisy"] = (zv.argmax(1) == d.val[1]).float().mean().item()
    if len(st.nets) > 1:
        zb = eval_logits(st.nets[1], d.x_test, d.mean, d.std, dd=dd)
        out["test_acc_b"] = (zb.argmax(1) == d.y_test).float().mean().item()
    return out


# ----------------------------------------------------------------------------- Fig. 3: gradient error on a probe set

GRAD_FIELDS = ("grad_cos_last", "grad_cos_feat", "grad_err_feat_norm", "grad_err_feat_bound")


def grad_probe(d, seed, track=None, dataset=""):
    """Indices (<= PROBE_SIZE,) of the fixed Fig. 3 probe set: corrupted training samples, or None when off.
    track: --track-grad-error (None: on when some labels are corrupted); dataset: its name, for the message.

    Drawn once from the run seed with a private generator, so the global RNG (and
    therefore the training trajectory) is untouched, and a resumed run gets the same set.
    """
    if not d.clean_known:
        if track:
            raise train_cli.UserError(f"--track-grad-error needs the clean training labels; --dataset {dataset} has only its noisy ones")
        return None
    corrupted = (d.y_noisy != d.y).nonzero()[:, 0]
    if track is False or (track is None and len(corrupted) == 0):
        return None
    if len(corrupted) == 0:
        raise train_cli.UserError("--track-grad-error needs training labels that differ from the clean ones (e.g. --noise-rate > 0); got none")
    g = torch.Generator().manual_seed(seed * 100003 + 7919)
    pick = torch.randperm(len(corrupted), generator=g)[:PROBE_SIZE].to(corrupted.device)
    return corrupted[pick].sort().values


def grad_error_metrics(st, d, probe, loss_fn, loss_name):
    """Fig. 3 for the first network on the probe set; GRAD_FIELDS -> float (None when off).
    loss_fn: the per-sample loss, logits (B, C), labels (B,) -> (B,); loss_name: its --loss.

    The model is in eval mode (BN uses and keeps its running stats, so the probe
    leaves no trace), with no augmentation, but WITH the current training mask:
    the masked gradient is the one that trains the network. The loss is the run's
    per-sample --loss; label-independent terms (ANL's L1, ELR's regulariser) and
    co-teaching's selection are left out: they are equal for both labels or not a
    gradient. grad_err_feat_bound (FC heads with CE) is feature_grad_error_bound.
    """
    if probe is None:
        return dict.fromkeys(GRAD_FIELDS)
    net = st.nets[0]
    net.eval()
    try:
        with torch.enable_grad(), layers.eval_mask(net, "masked"):
            v = net.backbone(data.to_float(d.x[probe], d.mean, d.std))   # Net.forward in two halves: the probe needs v
            logits = net.head(v).float()
            ge = label_gradient_error(loss_fn, logits, v, list(net.backbone.last_layer.parameters()),
                                     d.y_noisy[probe], d.y[probe])
    finally:
        net.train()
    bound, w = None, getattr(net.head, "weight", None)
    if w is not None and loss_name == "ce":  # FC heads; the bound is for CE's ∂L/∂z = p − e_label
        w = w.detach()
        bound = feature_grad_error_bound(w, getattr(net.head, "mask", torch.ones_like(w)))
    return dict(grad_cos_last=ge.cos_params, grad_cos_feat=float(ge.cos_feat.mean()),
                grad_err_feat_norm=float(ge.err_feat.mean()), grad_err_feat_bound=bound)


# ----------------------------------------------------------------------------- Fig. 5 masks and the run summary

def save_mask(out, epoch, mask):
    """DIR/masks/epoch_XXX.npz with `mask`: (C, d) bool, the first network's mask after `epoch` (Fig. 5)."""
    folder = os.path.join(out, "masks")
    os.makedirs(folder, exist_ok=True)

    def w(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(f, mask=mask.detach().cpu().numpy() != 0)
    checkpoint.atomic_write(os.path.join(folder, f"epoch_{epoch:03d}.npz"), w)


def update_best(best, m):
    """Best test accuracy (papers report it; chosen on the test set) and the validation-selected
    epoch (chosen on the noisy validation split: the honest number). -> new best dict."""
    best = dict(best)
    if m["test_acc"] > best["acc"]:
        best.update(acc=m["test_acc"], epoch=m["epoch"])
    if m.get("val_acc_noisy") is not None and m["val_acc_noisy"] > best.get("val_acc", -1.0):
        best.update(val_acc=m["val_acc_noisy"], val_epoch=m["epoch"], test_at_val=m["test_acc"])
    return best


def mask_metrics(head, changes):
    """The metrics row's DCM fields of the first network's head: kept (fraction of its edges), mask_change
    (mean fraction of edges that changed at the epoch's mask updates), mask_updates (so far); an
    unmasked head keeps 1.0 and changes nothing. changes: 0-dim tensors, one per mask update."""
    dcm = isinstance(head, layers.DCMModule)
    return dict(kept=dcm_ref.kept_fraction(head.mask) if dcm else 1.0,
                mask_change=float(np.mean([float(c) for c in changes])) if changes else 0.0,
                mask_updates=head.updates if dcm else 0)


def final_metrics(history, best, d, epochs):
    """final.json: last and best (test-selected) accuracy, and with --val-frac the epoch
    selected on the noisy validation split and its test accuracy (README: the honest number);
    `finished`: when the run ended, UTC (the benchmark report's dates; file times change on checkout)."""
    final = dict(test_acc_last=history[-1]["test_acc"], test_acc_best=best["acc"], best_epoch=best["epoch"],
                 epochs=epochs, wall_s=float(sum(h["seconds"] for h in history)),
                 train_samples_per_s=float(np.mean([h["samples_per_s"] for h in history])), noise_rate=d.report["rate"],
                 finished=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if "val_epoch" in best:
        final.update(val_best_epoch=best["val_epoch"], val_acc_best=best["val_acc"], test_acc_at_val_best=best["test_at_val"])
    return final


def start_line(config, d, device, dd, out):
    """The run's first line: data sizes, noise rate, model, loss, method, device, ranks, folder.
    config: the run's flags as config.json records them."""
    N, B = len(d.y), min(config["batch_size"], len(d.y))
    per_rank = f" x {dd.world} ranks (batch {B // dd.world} per rank)" if dd.world > 1 else ""
    rate = "unknown" if d.report["rate"] is None else f"{d.report['rate']:.3f}"
    c = config
    return (f"dcm-ref: {c['dataset']} ({N} train, {len(d.y_test)} test, noise {rate}) "
            f"{c['backbone']}+{c['head']} loss={c['loss']} method={c['method']} on {device}{per_rank} -> {out}")


def epoch_line(m, epochs):
    """One epoch's line: the metrics.jsonl row m in short, of `epochs` (gcos when the Fig. 3 probe measured it)."""
    return (f"epoch {m['epoch']:3d}/{epochs}  lr {m['lr']:.4f}  loss {m['train_loss']:.4f}  "
            f"train(noisy) {fmt_pct(m['train_acc_noisy'])}  train(clean) {fmt_pct(m['train_acc_clean'])}  "
            + (f"val(noisy) {fmt_pct(m['val_acc_noisy'])}  " if "val_acc_noisy" in m else "") +
            f"test {fmt_pct(m['test_acc'])}  kept {m['kept']:.3f}  change {m['mask_change']:.3f}  "
            + (f"gcos {m['grad_cos_last']:+.2f}  " if m.get("grad_cos_last") is not None else "") +
            f"{m['seconds']:.1f}s  eta {m['eta_s']:.0f}s")


def fmt_pct(x):
    """0.684 -> ' 68.4%'; None (not measured this epoch) -> '  -  '."""
    return "  -  " if x is None else f"{100 * x:5.1f}%"


def done_line(final, out):
    """The run's last line, from final.json: last and best test accuracy, and the validation-selected one."""
    val = (f"  at best val {100 * final['test_acc_at_val_best']:.2f}% (epoch {final['val_best_epoch']})"
           if "val_best_epoch" in final else "")
    return (f"done: test accuracy last {100 * final['test_acc_last']:.2f}%  best {100 * final['test_acc_best']:.2f}% "
            f"(epoch {final['best_epoch']}){val}  in {final['wall_s']:.1f}s -> {out}")
