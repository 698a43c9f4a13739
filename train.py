"""Train a classifier on noisy labels, with or without Dynamic Connection Masking.

The experiment of Zhang et al., "Combating Noisy Labels via Dynamic Connection
Masking" (arXiv 2508.09697): a backbone produces features v, a head (FC or KAN)
maps them to logits, and DCM masks the head's least informative edges
(dcm_ref.py, kan.py) so noisy-label gradients reach the backbone through fewer
paths. data.py loads the data and corrupts labels with noise.py; losses come from losses.py.

    python train.py                                   # digits, MLP, DFC head, 40% symmetric noise
    python train.py --dataset fashion-mnist --head fc --noise symmetric --noise-rate 0.6
    python train.py --dataset cifar10 --data-dir ~/data --backbone cnn8 --head dfc \\
        --loss anl_ce --noise symmetric --noise-rate 0.8 --epochs 120    # docs/design.md §7 protocol
    python train.py --dataset clothing1m --data-dir ~/clothing1m --noise none --backbone resnet50 \\
        --pretrained resnet50_imagenet.pth --samples-per-epoch 64000 --epochs 10   # docs/realworld.md
    python train.py --out runs/my-run --resume                       # continue a run to its --epochs
    python train.py --out runs/my-run --resume --extend --epochs 60  # train a run longer (recorded in config.json)
    python train.py --out runs/my-run --auto-resume --head dfc       # preemptible job: rerun the same command
    torchrun --standalone --nproc_per_node=4 train.py --head dfc     # 4 processes (GPUs), same flags

Outputs in --out DIR: config.json, noise_report.json, metrics.jsonl (one JSON
object per epoch), final.json and checkpoint.pt + checkpoint.pt.sha256 (written
atomically each epoch, verified on resume; checkpoint.py). A run locks DIR while it
runs; SIGINT and SIGTERM stop it after the current step, resumable.

Multi-process (torchrun, docs/design.md §2): --batch-size is the GLOBAL batch, split evenly
over the ranks; gradients are averaged and DCM moments summed over ranks, so every
rank holds the same parameters and the same mask (docs/multiprocess.md).
"""
import argparse
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import torch

import checkpoint
import data
import dcm_ref
import distributed
import losses
import nets
import presets
import realworld

HEADS = ("fc", "dfc", "kan", "dkan")
METHODS = ("standard", "coteaching", "elr")
NOISES = ("none", "symmetric", "asymmetric", "pairflip", "instance", "cifar100-superclass")
PROBE_SIZE = 256  # Fig. 3 probe set: at most this many corrupted training samples
CKPT_IGNORED = {"epochs", "resume", "auto_resume", "extend", "out", "stop_after", "device", "compile", "overwrite",
                "threads", "decode_workers", "train_eval_every"}
SEED_MAX = 2 ** 32  # seeds are in [0, 2^32): seed * 100003 + epoch must fit torch's 64-bit generator seed


class UserError(Exception):
    """A mistake in the command line or the data: reported in one line, exit 2."""


class PeerFailed(Exception):
    """Another rank failed during setup and reported it; this rank exits quietly (exit 2)."""


# ----------------------------------------------------------------------------- Flags

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help=f"one of {', '.join(data.ALL_DATASETS)}")
    g.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's usual place, see README)")
    g.add_argument("--noisy-labels-file", default=None, help="CIFAR-N label file (CIFAR-10_human.pt / CIFAR-100_human.pt)")
    g.add_argument("--noisy-labels", default=None, help="CIFAR-N label set: aggre|worst|rand1|rand2|rand3 (10) or noisy100 (100)")
    g.add_argument("--limit-train", type=int, default=0, help="use a seeded class-stratified subset of N training samples (0 = all)")
    g.add_argument("--val-frac", type=float, default=0.0, help="hold out this fraction of the NOISY training set as validation (for choosing hyper-parameters without the test set)")
    g.add_argument("--augment", default="auto", choices=("auto", "none", "crop-flip", "rrc-flip"),
                   help="auto = crop-flip for CIFAR, rrc-flip (random resized crop + flip) for webvision-mini/clothing1m, none otherwise")
    g = p.add_argument_group("real-world noisy datasets: webvision-mini, clothing1m (docs/realworld.md)")
    g.add_argument("--image-size", type=int, default=None, help="training/test resolution S (S x S); default 224")
    g.add_argument("--samples-per-epoch", type=int, default=0,
                   help="train each epoch on a new seeded class-balanced subset of N noisy images, decoded at the "
                        "start of the epoch (0 = all, decoded once)")
    g.add_argument("--subset-once", action="store_true",
                   help="with --samples-per-epoch: keep epoch 1's subset for the whole run (decodes N images once; not the usual protocol)")
    g.add_argument("--decode-workers", type=int, default=8, help="threads decoding the JPEGs at load time")
    g.add_argument("--train-list", default=None, help="webvision-mini: two-column 'path label' training list (paths relative to --data-dir)")
    g.add_argument("--test-list", default=None, help="webvision-mini: two-column 'path label' test list (paths relative to --data-dir)")
    g.add_argument("--imagenet-val-dir", default=None, help="webvision-mini: ILSVRC12 val in one folder per synset; "
                   "its first 50 classes are a second clean test set (metric imagenet_acc)")
    g = p.add_argument_group("label noise (docs/design.md §5)")
    g.add_argument("--noise", default="symmetric", choices=NOISES)
    g.add_argument("--noise-rate", type=float, default=0.4, help="fraction of labels flipped, in [0, 1)")
    g.add_argument("--noise-include-true", action="store_true", help="symmetric noise may keep the true class (ELR/DivideMix convention)")
    g.add_argument("--noise-sampling", default="exact", choices=("exact", "bernoulli"), help="exact = exactly round(T[i,j]*n_i) flips per class")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="mlp", help=f"one of {', '.join(nets.BACKBONES)}")
    g.add_argument("--head", default="dfc", help="fc | dfc (DCM on FC) | kan | dkan (DCM on KAN)")
    g.add_argument("--pretrained", default=None, help="backbone weights: a state dict file in torchvision's key layout (fc.* ignored), e.g. ImageNet ResNet-50")
    g.add_argument("--kan-grid", type=int, default=5, help="KAN head: B-spline grid intervals")
    g.add_argument("--kan-order", type=int, default=3, help="KAN head: B-spline order")
    g = p.add_argument_group("DCM (Fig. 2, Eq. 2; docs/design.md §2)")
    g.add_argument("--keep", type=float, default=0.1, help="fraction of head edges kept, in (0, 1]; 1 = no masking")
    g.add_argument("--dcm-scope", default="row", choices=("row", "global"), help="row: each class keeps round(keep*d) inputs; global: round(keep*C*d) edges overall")
    g.add_argument("--dcm-interval", type=int, default=1, help="recompute the mask every t optimizer steps")
    g.add_argument("--dcm-warmup", type=int, default=0, help="optimizer steps with the full head before masking starts")
    g.add_argument("--dcm-stats", default="batch", choices=("batch", "interval"), help="score edges on the current batch (Eq. 2) or on moments pooled since the last update")
    g.add_argument("--dcm-eval", default="full", choices=("full", "masked"), help="evaluate with the full head (paper default) or with the last mask")
    g.add_argument("--dcm-freeze", action="store_true", help="masked head weights stay exactly unchanged by a step (no weight decay/momentum drift)")
    g = p.add_argument_group("loss and method (docs/design.md §4)")
    g.add_argument("--loss", default="ce", help=f"one of {', '.join(sorted(losses.LOSSES))}")
    g.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE", help="override a loss hyper-parameter, e.g. --loss-arg q=0.5 (repeatable)")
    g.add_argument("--method", default="standard", help="standard | coteaching (two networks) | elr (early-learning regularisation)")
    g.add_argument("--forget-rate", type=float, default=None, help="co-teaching tau (default: the noise rate)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=None, help="default 1e-4, and 0 for anl_* losses (their L1 term replaces it)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--schedule", default="cosine", choices=("cosine", "step", "none"), help="step = x0.1 at 50%% and 75%% of training")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm (0 = off)")
    g.add_argument("--seed", type=int, default=0, help="seeds the model, the noise, the batches and the augmentation")
    g.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default); 1 avoids slow-downs when other jobs share the cores")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<head>-<loss>-<noise><rate>-s<seed>, then "
                   "a token per other flag that differs from its default, e.g. -keep0.3, and -2, -3... rather than "
                   "replacing a run); one run at a time holds it (DIR/.lock)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out to its --epochs (verified checkpoint)")
    g.add_argument("--extend", action="store_true", help="with --resume: train to a larger --epochs than the run was "
                   "started with (the LR schedule is stretched from the current epoch on; recorded in config.json)")
    g.add_argument("--auto-resume", action="store_true", help="resume when --out holds a checkpoint of this same "
                   "configuration, start fresh when it holds none (for preemptible jobs that rerun the same command)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (its files are moved "
                   "to DIR/replaced/ and deleted only when the new run finishes)")
    g.add_argument("--stop-after", type=int, default=0, help="stop (resumably) after this epoch, as if interrupted")
    g = p.add_argument_group("diagnostics (Fig. 3-5, docs/design.md §8; plot them with plot.py)")
    g.add_argument("--track-grad-error", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Fig. 3: each epoch, cosine between the noisy- and clean-label gradients on a fixed probe set of "
                        f"<= {PROBE_SIZE} corrupted training samples; None = on when some training labels differ from the clean ones "
                        f"(off for webvision-mini/clothing1m: their clean training labels are unknown)")
    g.add_argument("--train-eval-every", type=int, default=1, metavar="N",
                   help="the pass over the whole training set (train accuracy vs noisy/clean labels, confidence) every N epochs "
                        "and at the last; 0 = never (its metrics are null). Saves a forward pass over the training set, e.g. for ResNet-50 at 224x224")
    g.add_argument("--save-masks", action="store_true", help="Fig. 5: write DIR/masks/epoch_XXX.npz (the first network's C x d bool mask) after every epoch")
    g = p.add_argument_group("presets (presets.py)")
    g.add_argument("--preset", default=None, metavar="NAME", help="fill in the flags of a paper protocol; flags typed explicitly override it; recorded in config.json")
    g.add_argument("--list-presets", action="store_true", help="print every preset with its flags and source, and exit")
    return p


def explicit_flags(argv):
    """Names of the flags the user typed (to tell them apart from defaults on --resume)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def check_args(a):
    """Validate flag values; raises UserError with one line."""
    checks = [
        (a.dataset in data.ALL_DATASETS, f"--dataset {a.dataset!r} is unknown; expected one of {', '.join(data.ALL_DATASETS)}"),
        (a.backbone in nets.BACKBONES, f"--backbone {a.backbone!r} is unknown; expected one of {', '.join(nets.BACKBONES)}"),
        (a.head in HEADS, f"--head {a.head!r} is unknown; expected one of {', '.join(HEADS)}"),
        (a.method in METHODS, f"--method {a.method!r} is unknown; expected one of {', '.join(METHODS)}"),
        (a.loss in losses.LOSSES, f"--loss {a.loss!r} is unknown; expected one of {', '.join(sorted(losses.LOSSES))}"),
        (0.0 <= a.noise_rate < 1.0, f"--noise-rate must be in [0, 1), got {a.noise_rate}"),
        (0.0 < a.keep <= 1.0, f"--keep must be in (0, 1], got {a.keep}"),
        (a.epochs >= 1, f"--epochs must be >= 1, got {a.epochs}"),
        (a.batch_size >= 2, f"--batch-size must be >= 2 (batch statistics), got {a.batch_size}"),
        (a.lr > 0, f"--lr must be > 0, got {a.lr}"),
        (a.dcm_interval >= 1, f"--dcm-interval must be >= 1, got {a.dcm_interval}"),
        (a.dcm_warmup >= 0, f"--dcm-warmup must be >= 0, got {a.dcm_warmup}"),
        (a.limit_train >= 0, f"--limit-train must be >= 0, got {a.limit_train}"),
        (0.0 <= a.val_frac < 1.0, f"--val-frac must be in [0, 1), got {a.val_frac}"),
        (a.weight_decay is None or a.weight_decay >= 0, f"--weight-decay must be >= 0, got {a.weight_decay}"),
        (a.grad_clip >= 0, f"--grad-clip must be >= 0, got {a.grad_clip}"),
        (a.train_eval_every >= 0, f"--train-eval-every must be >= 0 (0 = never), got {a.train_eval_every}"),
        (not a.save_masks or a.head in ("dfc", "dkan"), f"--save-masks needs a DCM head (--head dfc or dkan), got --head {a.head}"),
        (a.samples_per_epoch >= 0, f"--samples-per-epoch must be >= 0, got {a.samples_per_epoch}"),
        (not a.subset_once or a.samples_per_epoch > 0, "--subset-once needs --samples-per-epoch N (the subset to keep)"),
        (a.image_size is None or a.image_size >= 8, f"--image-size must be >= 8, got {a.image_size}"),
        (a.pretrained is None or os.path.isfile(a.pretrained), f"--pretrained {a.pretrained} does not exist (or is not a file)"),
        (a.kan_grid >= 1, f"--kan-grid must be >= 1 (B-spline grid intervals), got {a.kan_grid}"),
        (a.kan_order >= 0, f"--kan-order must be >= 0 (B-spline order), got {a.kan_order}"),
        (a.forget_rate is None or 0.0 <= a.forget_rate < 1.0, f"--forget-rate must be in [0, 1), got {a.forget_rate}"),
        (0.0 <= a.momentum < 1.0, f"--momentum must be in [0, 1), got {a.momentum}"),
        (0 <= a.seed < SEED_MAX, f"--seed must be in [0, 2^32), got {a.seed}"),
        (a.threads >= 0, f"--threads must be >= 0 (0 = torch's default), got {a.threads}"),
        (a.stop_after >= 0, f"--stop-after must be >= 0 (0 = never), got {a.stop_after}"),
        (a.decode_workers >= 1, f"--decode-workers must be >= 1, got {a.decode_workers}"),
        (not (a.resume and a.overwrite), "--resume continues the run in --out and --overwrite replaces it; give one of them"),
        (not (a.auto_resume and (a.resume or a.overwrite)), "--auto-resume already resumes or starts fresh; drop --resume/--overwrite"),
        (not a.extend or a.resume, "--extend needs --resume (it lengthens an existing run)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if a.dataset in data.REAL_NOISE_DATASETS and a.noise != "none":
        raise UserError(f"--dataset {a.dataset} brings its own human noise; add --noise none (got --noise {a.noise})")
    image_flags = [f for f, v in (("--image-size", a.image_size), ("--samples-per-epoch", a.samples_per_epoch),
                                  ("--train-list", a.train_list), ("--test-list", a.test_list),
                                  ("--imagenet-val-dir", a.imagenet_val_dir)) if v]
    if image_flags and a.dataset not in data.IMAGE_DATASETS:
        raise UserError(f"{', '.join(image_flags)} apply to {' and '.join(data.IMAGE_DATASETS)} only, not to --dataset {a.dataset}")


# Flags that do nothing in some configurations: (flag dest, applies?, why not).
NO_EFFECT = (
    ("keep", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_scope", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_interval", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_warmup", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_stats", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_eval", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("dcm_freeze", lambda a: a.head in ("dfc", "dkan"), "only DCM heads (dfc, dkan) are masked"),
    ("kan_grid", lambda a: a.head in ("kan", "dkan"), "only KAN heads (kan, dkan) have a grid"),
    ("kan_order", lambda a: a.head in ("kan", "dkan"), "only KAN heads (kan, dkan) have a spline order"),
    ("forget_rate", lambda a: a.method == "coteaching", "it is co-teaching's tau (--method coteaching)"),
    ("noise_rate", lambda a: a.noise != "none", "--noise none corrupts no labels"),
    ("noise_include_true", lambda a: a.noise == "symmetric", "it applies to --noise symmetric only"),
    ("momentum", lambda a: a.optimizer == "sgd", "it is SGD's momentum (--optimizer sgd)"),
)


def flag_warnings(a, typed):
    """One line per typed flag that has no effect in this configuration. typed: set of dests."""
    out = []
    for key, applies, why in NO_EFFECT:
        if key in typed and not applies(a):
            out.append(f"--{key.replace('_', '-')} has no effect here: {why}")
    return out


def parse_loss_args(items):
    """['q=0.5', 'alpha=2'] -> {'q': 0.5, 'alpha': 2.0}."""
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise UserError(f"--loss-arg expects KEY=NUMBER, got {item!r}") from None
        if not sep:
            raise UserError(f"--loss-arg expects KEY=NUMBER, got {item!r}")
    return out


def pick_device(name, dd=None):
    """torch.device for --device; under torchrun (dd.world > 1) CUDA means cuda:LOCAL_RANK."""
    dd = dd or distributed.Dist()
    if dd.world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        if dd.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {dd.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            f"start at most {torch.cuda.device_count()} processes per node")
        return torch.device("cuda", dd.local_rank)
    if dd.world > 1 and name.startswith("cuda:"):
        raise UserError(f"--device {name}: under torchrun every rank uses cuda:LOCAL_RANK; use --device cuda or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, but this torch ({torch.__version__}) sees no GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None


def build_net(a, in_shape, num_classes, pretrained=None):
    backbone = nets.make_backbone(a.backbone, in_shape)
    if pretrained is not None:
        try:
            nets.load_pretrained(backbone, pretrained)
        except ValueError as e:
            raise UserError(str(e)) from None
    head = nets.head_init(a.head, backbone.feature_dim, num_classes, a.kan_grid, a.kan_order)
    return nets.Net(backbone, head)


def net_forward(net, x, mstate, a, compiled=None, reduce=lambda m: m):
    """One forward with the DCM schedule. x: (B, ...) -> logits (B, C), new mask state."""
    v = (compiled if compiled is not None else net.backbone)(x)  # no truth test: a compiled module has no len()
    params = net.head_params()
    feats = nets.head_features(a.head, params, v)
    mask = None
    if a.head in ("dfc", "dkan"):
        m = reduce(nets.head_moments(a.head, feats))
        mstate = dcm_ref.mask_schedule_step(
            mstate, m, lambda mm: nets.head_scores(a.head, params, mm), a.keep, scope=a.dcm_scope,
            interval=a.dcm_interval, warmup=a.dcm_warmup, stats=a.dcm_stats)
        mask = mstate.mask
    return nets.head_forward(a.head, params, feats, mask).float(), mstate


def eval_logits(net, x, mean, std, a, mstate, batch=1024, dd=distributed.Dist()):
    """Logits (N, C) of a uint8 tensor x (N, ...) in eval mode, without augmentation.

    Multi-process: each rank computes a contiguous 1/W of the rows and every rank
    receives all N rows, so metrics computed from them agree on all distributed.
    """
    sizes = [len(part) for part in x.tensor_split(dd.world)]
    x = x.tensor_split(dd.world)[dd.rank]
    net.eval()
    mask = mstate.mask if (a.head in ("dfc", "dkan") and a.dcm_eval == "masked") else None
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = data.to_float(x[i:i + batch], mean, std)
            params = net.head_params()
            feats = nets.head_features(a.head, params, net.backbone(xb))
            out.append(nets.head_forward(a.head, params, feats, mask).float())
    net.train()
    if not out:  # a rank can get no rows of a set smaller than the world size
        C = net.head_params()["w" if a.head in ("fc", "dfc") else "base_weight"].shape[0]
        out = [torch.zeros(0, C, device=x.device)]
    return distributed.all_gather_rows(torch.cat(out), sizes, dd)


# ----------------------------------------------------------------------------- Training

def lr_at(a, step, total):
    """Learning rate at optimizer step `step` of `total` (cosine / step / none)."""
    if a.schedule == "cosine":
        return a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if a.schedule == "step":
        return a.lr * (0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total)))
    return a.lr


def make_optimizer(a, net):
    wd = losses.weight_decay(a.loss, a.weight_decay)
    if a.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=wd)
    return torch.optim.Adam(net.parameters(), lr=a.lr, weight_decay=wd)


def optimizer_step(a, net, opt, loss, mask, dd=distributed.Dist()):
    """Backward, average gradients over ranks, clip, step; with --dcm-freeze the masked head
    entries are restored exactly. Clipping after the average clips the global gradient."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_grads(net.parameters(), dd)
    if a.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), a.grad_clip)
    frozen = {}
    if a.dcm_freeze and mask is not None:
        frozen = {k: net.head[k].detach().clone() for k in nets.head_masked_weights(a.head)}
    opt.step()
    with torch.no_grad():
        for k, before in frozen.items():
            m = mask.reshape(mask.shape + (1,) * (before.dim() - 2))
            net.head[k].copy_(dcm_ref.freeze_masked(net.head[k], before, m.expand_as(before)))


class NonFiniteLoss(Exception):
    pass


def train_epoch(a, st, d, epoch, total_steps, loss_fn, delta):
    """One pass over the training set. st: run state (nets, opts, masks, elr memory, step, dist).

    The permutation is the same on every rank; each rank takes its 1/W of every global
    batch of B, so all ranks take the same number of steps. Crops/flips differ per rank.
    Returns the mean loss and the sample count over all ranks, and the mask changes.
    """
    dd = st["dist"]
    N, B = len(d["y"]), min(a.batch_size, len(d["y"]))
    g = torch.Generator().manual_seed(a.seed * 100003 + epoch)
    perm = torch.randperm(N, generator=g).to(d["x"].device)
    gaug = torch.Generator(device=d["x"].device).manual_seed(a.seed * 100003 + epoch + 1000003 * dd.rank)
    tot_loss, n_seen, changes = 0.0, 0, []
    for i in range(0, N - B + 1, B):  # drop the last partial batch: BN and batch std need B >= 2
        idx = perm[i:i + B].tensor_split(dd.world)[dd.rank]
        xb = d["x"][idx]
        if d["aug"] == "crop-flip":  # on raw pixels, so padding is black as in torchvision's RandomCrop
            xb = data.augment_batch(xb.float(), gaug)
        elif d["aug"] == "rrc-flip":
            xb = realworld.random_resized_crop_flip(xb.float(), gaug)
        xb = data.to_float(xb, d["mean"], d["std"])
        lr = lr_at(a, st["step"], total_steps)
        for opt in st["opts"]:
            for group in opt.param_groups:
                group["lr"] = lr
        loss_val, ch = train_step(a, st, xb, d["y_noisy"][idx], d["ids"][idx], loss_fn, delta, epoch)
        if not math.isfinite(loss_val):
            raise NonFiniteLoss(f"non-finite training loss ({loss_val}) at epoch {epoch}, step {st['step']}; "
                                f"lower --lr or use --grad-clip; the last good checkpoint is kept")
        tot_loss, n_seen = tot_loss + loss_val * len(idx), n_seen + len(idx)
        changes += ch
        st["step"] += 1
        if "stop" in st and stop_requested(st):
            raise Stopped()
    if dd.world > 1:
        tot, n = distributed.all_sum((torch.tensor([tot_loss, n_seen], dtype=torch.float64),), dd)[0]
        tot_loss, n_seen = float(tot), int(n)
    return tot_loss / max(n_seen, 1), changes, n_seen


def train_step(a, st, xb, yb, ids, loss_fn, delta, epoch):
    """One optimizer step for every network of the method; ids: the batch's rows of the ELR
    memory. Returns (loss, mask changes)."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (a.amp and xb.is_cuda) else torch.autocast("cpu", enabled=False)
    dd = st["dist"]
    outs, changes = [], []
    for k, net in enumerate(st["nets"]):
        with ctx:
            logits, new_state = net_forward(net, xb, st["masks"][k], a, st["compiled"][k],
                                            reduce=lambda m: distributed.all_sum(m, dd))  # global-batch moments
        if new_state.updates != st["masks"][k].updates:
            changes.append(new_state.change)
        st["masks"][k] = new_state
        outs.append(logits)
    if a.method == "coteaching":  # each rank selects small-loss samples within its shard, as per-GPU co-teaching
        la, lb = loss_fn(outs[0], yb), loss_fn(outs[1], yb)
        tau = a.forget_rate if a.forget_rate is not None else a.noise_rate
        keep_a, keep_b = losses.coteaching_select(la.detach(), lb.detach(), losses.forget_rate(epoch, tau))
        per_net = [la[keep_a].mean(), lb[keep_b].mean()]
    elif a.method == "elr":
        lv, new_t = losses.elr_loss(outs[0], yb, st["elr_t"][ids], **st["elr_hp"])
        sizes = [len(ids)] * dd.world  # every rank's new rows, so the memory stays the same everywhere
        st["elr_t"][distributed.all_gather_rows(ids, sizes, dd)] = distributed.all_gather_rows(new_t, sizes, dd)
        per_net = [lv.mean()]
    else:
        per_net = [loss_fn(outs[0], yb).mean()]
    for net, opt, loss, mstate in zip(st["nets"], st["opts"], per_net, st["masks"]):
        if delta:
            loss = loss + delta * losses.l1_penalty(net.parameters())
        mask = mstate.mask if a.head in ("dfc", "dkan") else None
        optimizer_step(a, net, opt, loss, mask, dd)
    return per_net[0].item(), changes


TRAIN_METRICS = ("train_acc_noisy", "train_acc_clean", "conf_clean", "conf_noisy", "fit_noisy")


def train_metrics(a, net, ms, d, dd):
    """One pass over the training set -> {TRAIN_METRICS}: accuracy against the noisy and the
    clean labels, mean p of the given label on clean vs noisy samples, fit of the noisy ones."""
    z = eval_logits(net, d["x"], d["mean"], d["std"], a, ms, dd=dd)
    pred, p = z.argmax(1), z.softmax(1)
    is_noisy = d["y_noisy"] != d["y"]
    p_given = p.gather(1, d["y_noisy"][:, None])[:, 0]
    out = dict(train_acc_noisy=(pred == d["y_noisy"]).float().mean().item(),
               train_acc_clean=(pred == d["y"]).float().mean().item(),
               conf_clean=p_given[~is_noisy].mean().item() if (~is_noisy).any() else None,
               conf_noisy=p_given[is_noisy].mean().item() if is_noisy.any() else None,
               fit_noisy=(pred[is_noisy] == d["y_noisy"][is_noisy]).float().mean().item() if is_noisy.any() else None)
    if not d["clean_known"]:  # y is y_noisy there: clean-label metrics would be fake
        out.update(train_acc_clean=None, conf_clean=None, conf_noisy=None, fit_noisy=None)
    return out


def train_eval_due(a, epoch):
    """Whether this epoch evaluates the whole training set (--train-eval-every; always the last epoch)."""
    return a.train_eval_every > 0 and (epoch % a.train_eval_every == 0 or epoch == a.epochs)


def evaluate(a, st, d, train_pass=True):
    """Test accuracy; with train_pass also train accuracy vs noisy/clean labels and confidence on
    clean vs noisy samples (else None). Identical on every rank: the logits are computed sharded
    and gathered whole."""
    net, ms, dd = st["nets"][0], st["masks"][0], st["dist"]
    test_acc = (eval_logits(net, d["x_test"], d["mean"], d["std"], a, ms, dd=dd).argmax(1) == d["y_test"]).float().mean()
    out = dict(test_acc=test_acc.item(), **(train_metrics(a, net, ms, d, dd) if train_pass else dict.fromkeys(TRAIN_METRICS)))
    if d["clean_val"] is not None:  # Clothing1M's clean val keys / ILSVRC12 val for WebVision
        xc, yc, metric = d["clean_val"]
        out[metric] = (eval_logits(net, xc, d["mean"], d["std"], a, ms, dd=dd).argmax(1) == yc).float().mean().item()
    if d["val"] is not None:
        zv = eval_logits(net, d["val"][0], d["mean"], d["std"], a, ms, dd=dd)
        out["val_acc_noisy"] = (zv.argmax(1) == d["val"][1]).float().mean().item()
    if len(st["nets"]) > 1:
        zb = eval_logits(st["nets"][1], d["x_test"], d["mean"], d["std"], a, st["masks"][1], dd=dd)
        out["test_acc_b"] = (zb.argmax(1) == d["y_test"]).float().mean().item()
    return out


# ----------------------------------------------------------------------------- Diagnostics (Fig. 3-5; docs/design.md §8)

GRAD_FIELDS = ("grad_cos_last", "grad_cos_feat", "grad_err_feat_norm", "grad_err_feat_bound")


def grad_probe(a, d):
    """Indices (<= PROBE_SIZE,) of the fixed Fig. 3 probe set: corrupted training samples, or None when off.

    Drawn once from the run seed with a private generator, so the global RNG (and
    therefore the training trajectory) is untouched, and a resumed run gets the same set.
    """
    if not d["clean_known"]:
        if a.track_grad_error:
            raise UserError(f"--track-grad-error needs the clean training labels; --dataset {a.dataset} has only its noisy ones")
        return None
    corrupted = (d["y_noisy"] != d["y"]).nonzero()[:, 0]
    if a.track_grad_error is False or (a.track_grad_error is None and len(corrupted) == 0):
        return None
    if len(corrupted) == 0:
        raise UserError("--track-grad-error needs training labels that differ from the clean ones (e.g. --noise-rate > 0); got none")
    g = torch.Generator().manual_seed(a.seed * 100003 + 7919)
    pick = torch.randperm(len(corrupted), generator=g)[:PROBE_SIZE].to(corrupted.device)
    return corrupted[pick].sort().values


def grad_error_metrics(a, st, d, probe, loss_fn):
    """Fig. 3 for the first network on the probe set; GRAD_FIELDS -> float (None when off).

    The model is in eval mode (BN uses and keeps its running stats, so the probe
    leaves no trace), with no augmentation, but WITH the current training mask:
    the masked gradient is the one that trains the network. The loss is the run's
    per-sample --loss; label-independent terms (ANL's L1, ELR's regulariser) and
    co-teaching's selection are left out: they are equal for both labels or not a
    gradient. grad_err_feat_bound (FC heads with CE) is dcm_ref.feature_grad_error_bound.
    """
    if probe is None:
        return dict.fromkeys(GRAD_FIELDS)
    net, mask = st["nets"][0], st["masks"][0].mask if a.head in ("dfc", "dkan") else None
    net.eval()
    try:
        with torch.enable_grad():
            v = net.backbone(data.to_float(d["x"][probe], d["mean"], d["std"]))
            params = net.head_params()
            logits = nets.head_forward(a.head, params, nets.head_features(a.head, params, v), mask).float()
            ge = dcm_ref.label_gradient_error(loss_fn, logits, v, list(net.backbone.last_layer.parameters()),
                                              d["y_noisy"][probe], d["y"][probe])
    finally:
        net.train()
    bound = None
    if a.head in ("fc", "dfc") and a.loss == "ce":  # the bound is for CE's ∂L/∂z = p − e_label
        w = params["w"].detach()
        bound = dcm_ref.feature_grad_error_bound(w, torch.ones_like(w) if mask is None else mask)
    return dict(grad_cos_last=ge.cos_params, grad_cos_feat=float(ge.cos_feat.mean()),
                grad_err_feat_norm=float(ge.err_feat.mean()), grad_err_feat_bound=bound)


def save_mask(out, epoch, mask):
    """DIR/masks/epoch_XXX.npz with `mask`: (C, d) bool, the first network's mask after `epoch` (Fig. 5)."""
    folder = os.path.join(out, "masks")
    os.makedirs(folder, exist_ok=True)

    def w(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(f, mask=mask.detach().cpu().numpy() != 0)
    checkpoint.atomic_write(os.path.join(folder, f"epoch_{epoch:03d}.npz"), w)


# ----------------------------------------------------------------------------- Run folder and checkpoints

def checkpoint_state(st, epoch, history, best, config, extended=()):
    """What checkpoint.pt holds: only tensors, numbers, strings, lists and dicts, so that
    checkpoint.load_checkpoint can use torch.load(weights_only=True). best: {"acc", "epoch",
    "val_acc", "val_epoch", "test_at_val"}; extended: the --extend history."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"config": config, "epoch": epoch, "step": st["step"], "history": history, "best": best,
            "nets": [n.state_dict() for n in st["nets"]], "opts": [o.state_dict() for o in st["opts"]],
            "masks": [dict(m._asdict()) for m in st["masks"]], "elr_t": st["elr_t"], "y_noisy": st["y_noisy"],
            "rng": rng, "extended": list(extended)}


def load_checkpoint(path, device):
    """Verified checkpoint.load_checkpoint; UserError (one line) when missing or corrupt."""
    try:
        ck, verified = checkpoint.load_checkpoint(path, device)
    except checkpoint.CheckpointError as e:
        raise UserError(f"{e}; resume from another run or start a new --out") from None
    if not verified:
        warn(f"{path} has no {checkpoint.SUM_SUFFIX} checksum (written before train.py kept one); loaded unverified")
    return ck


def warn(msg):
    print(f"train.py: warning: {msg}", file=sys.stderr, flush=True)


def default_out(a):
    """runs/<name> for a run without --out (checkpoint.default_run_name)."""
    defaults = vars(build_parser().parse_args([]))
    return os.path.join("runs", checkpoint.default_run_name(vars(a), defaults))


def claim_out(a):
    """The run folder, locked. -> (out, Lock). A new run under a default name takes the
    first free runs/<name>[-k]; --out, --resume and --auto-resume take exactly that folder."""
    fresh = not a.out and not a.resume and not a.auto_resume
    try:
        out, lock = checkpoint.claim_run_dir(a.out or default_out(a), fresh)
    except checkpoint.LockError as e:
        raise UserError(str(e)) from None
    msg = checkpoint.stale_message(lock)
    if msg:
        warn(msg)
    return out, lock


def resolve_resume(a, typed, out, device):
    """--resume / --auto-resume: -> the checkpoint (a takes its saved config) or None
    (--auto-resume on a folder with no checkpoint: a fresh start). Raises UserError for
    flags that contradict the saved run, and for a run already finished or a different
    --epochs without --extend (a silently stitched LR schedule)."""
    path = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(path):
        if a.auto_resume:
            return None
        raise UserError(f"--resume: no checkpoint at {path}; start the run without --resume")
    ck = load_checkpoint(path, device)
    saved = ck["config"]
    keys = (set(saved) & set(vars(a))) - CKPT_IGNORED
    compare = keys if a.auto_resume else keys & typed
    clash = sorted(k for k in compare if saved.get(k) != getattr(a, k))
    if a.auto_resume and saved["epochs"] != a.epochs:
        clash.append("epochs")
    if clash:
        was = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in clash)
        how = "use another --out, or --overwrite" if a.auto_resume else "drop them or start a new --out"
        raise UserError(f"--{'auto-' if a.auto_resume else ''}resume: flags contradict the saved run in {out} ({was}); {how}")
    for k in keys:
        setattr(a, k, saved[k])
    check_epochs(a, typed, ck, out)
    return ck


def check_epochs(a, typed, ck, out):
    """--epochs on --resume: the saved target unless --extend asks for a larger one."""
    saved, done = ck["config"]["epochs"], ck["epoch"]
    if "epochs" not in typed or a.auto_resume:
        a.epochs = saved
    if a.extend:
        if a.epochs <= saved:
            raise UserError(f"--extend: --epochs must exceed the run's {saved} epochs, got {a.epochs}")
    elif a.epochs != saved:
        raise UserError(f"--resume: {out} was started for {saved} epochs (its LR schedule spans them); "
                        f"add --extend to train to {a.epochs}, or drop --epochs")
    elif done >= saved and not a.auto_resume:
        raise UserError(f"--resume: {out} already finished its {saved} epochs; "
                        f"add --extend --epochs N (N > {saved}) to train longer")


def resume_record(out, meta, ck, a):
    """config.json of a resumed run: the original file, plus a `resumed` entry per resume
    and an `extended` entry per --extend (the original values are never rewritten silently)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = dict(meta)
    entry = dict(at_epoch=ck["epoch"], device_used=meta["device_used"], world_size=meta["world_size"])
    cfg["resumed"] = cfg.get("resumed", []) + [entry]
    if a.extend:
        cfg["extended"] = cfg.get("extended", []) + [dict(at_epoch=ck["epoch"], epochs_before=ck["config"]["epochs"],
                                                          epochs_after=a.epochs)]
        cfg["epochs"] = a.epochs
    return cfg


# ----------------------------------------------------------------------------- Main

def setup(a, argv, dd):
    """Everything before the first step; raises UserError on bad input. Flag errors come
    before the run folder is touched and before the data is loaded. -> (device, out, lock
    (None on ranks > 0), checkpoint or None, data, loss config, loss fn)."""
    typed = explicit_flags(argv)
    check_args(a)
    for msg in flag_warnings(a, typed) if dd.rank == 0 else ():
        warn(msg)
    device = pick_device(a.device, dd)
    if device.type == "cuda" and dd.world > 1:
        torch.cuda.set_device(device)  # NCCL talks through the current device
    hp = parse_loss_args(a.loss_arg)
    try:
        losses.loss_config(a.loss, 10, "cifar10", noise=a.noise, **hp)  # validates names before the data
    except ValueError as e:
        raise UserError(str(e)) from None
    out, lock = claim_out(a) if dd.rank == 0 else (a.out or default_out(a), None)
    try:
        ck = resolve_resume(a, typed, out, device) if (a.resume or a.auto_resume) else None
        if ck is None and os.path.exists(os.path.join(out, "checkpoint.pt")) and not a.overwrite:
            raise UserError(f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out")
        d, cfg, loss_fn = load_data(a, device, hp)
        B = min(a.batch_size, len(d["y"]))
        if dd.world > 1 and (B % dd.world or B // dd.world < 2):
            raise UserError(f"--batch-size {B} is the global batch and must split into {dd.world} equal "
                            f"per-rank shards of >= 2 samples; use a multiple of {dd.world} >= {2 * dd.world}")
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise
    return device, out, lock, ck, d, cfg, loss_fn


def load_data(a, device, hp):
    """data.prepare_training_data and the loss, then the checks that need the data's sizes.
    -> (data, loss config, loss fn)."""
    try:
        d = data.prepare_training_data(data.DataConfig.from_flags(a), device)
        cfg = losses.loss_config(a.loss, d["C"], a.dataset, noise=a.noise, **hp)
        loss_fn = losses.make_loss(a.loss, d["C"], a.dataset, noise=a.noise, **hp)
    except (data.DataError, ValueError) as e:  # ValueError: noise/loss validation (rates, maps, names)
        raise UserError(str(e)) from None
    n, C = len(d["y"]), d["C"]
    n_all = n + (len(d["val"][1]) if d["val"] is not None else 0)
    if a.limit_train and a.limit_train < C:
        raise UserError(f"--limit-train {a.limit_train} is below the {C} classes of {a.dataset}; use >= {C}")
    if a.limit_train and a.limit_train > n_all and d["pool"] is None:
        warn(f"--limit-train {a.limit_train} exceeds the {n_all} training samples of {a.dataset}; using all {n_all}")
    if n < 2:  # a batch needs 2 samples (batch statistics)
        raise UserError(f"--val-frac {a.val_frac:g} leaves {n} training sample(s) of {n_all}; use a smaller --val-frac"
                        if a.val_frac > 0 else f"{a.dataset} has {n} training sample(s); at least 2 are needed")
    if a.batch_size > n:
        warn(f"--batch-size {a.batch_size} exceeds the {n} training samples; each epoch is one batch of {n}")
    return d, cfg, loss_fn


def init_state(a, d, device, ck, dd=distributed.Dist()):
    """Networks, optimizers, masks, ELR memory; from the checkpoint `ck` when resuming.
    The seed is the same on every rank, so every rank builds the same initial networks."""
    torch.manual_seed(a.seed)
    n_nets = 2 if a.method == "coteaching" else 1
    pretrained = a.pretrained if ck is None else None  # a resumed run's weights are in its checkpoint
    nets_ = [build_net(a, d["in_shape"], d["C"], pretrained).to(device) for _ in range(n_nets)]
    opts = [make_optimizer(a, n) for n in nets_]
    C, dim = d["C"], nets_[0].backbone.feature_dim
    masks = [dcm_ref.mask_init((C, dim), device=device) for _ in nets_]
    st = dict(nets=nets_, opts=opts, masks=masks, step=0, y_noisy=d["y_noisy"], elr_t=None, dist=dd,
              compiled=[torch.compile(n.backbone) if a.compile else None for n in nets_])
    if a.method == "elr":
        st["elr_t"] = torch.zeros(d["n_ids"], C, device=device)
        st["elr_hp"] = {k: v for k, v in losses.loss_config("elr", C, a.dataset, noise=a.noise).items() if k in ("beta", "lam")}
    if ck is not None:
        for n, sd in zip(nets_, ck["nets"]):
            n.load_state_dict(sd)
        for o, sd in zip(opts, ck["opts"]):
            o.load_state_dict(sd)
        st["masks"] = [dcm_ref.MaskState(**m) for m in ck["masks"]]
        st["step"], st["elr_t"] = ck["step"], ck["elr_t"]
        if not torch.equal(ck["y_noisy"].to(device), d["y_noisy"]):
            raise UserError("--resume: the noisy labels differ from the saved run's (data or noise flags changed)")
        torch.set_rng_state(ck["rng"]["cpu"].cpu())
    return st


def fmt_pct(x):
    return "  -  " if x is None else f"{100 * x:5.1f}%"


def start(a, argv, dd):
    """Setup, probe set and initial state on every rank, then agree: when any rank failed,
    all stop and only the lowest failing rank reports. The agreement is also the barrier
    that keeps rank 0 from writing into --out before every rank has read it."""
    err, lock = None, None
    try:
        device, out, lock, ck, d, cfg, loss_fn = setup(a, argv, dd)
        probe = grad_probe(a, d)
        st = init_state(a, d, device, ck, dd)
    except UserError as e:
        err = e
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise
    first = distributed.first_failure(err is not None, dd)
    if first >= 0 and lock is not None:
        checkpoint.unlock_run(lock)
    if first == dd.rank:
        raise err
    if first >= 0:
        raise PeerFailed()
    return device, out, lock, ck, d, cfg, loss_fn, probe, st


def catch_stop_signals(flag):
    """SIGINT (Ctrl-C) and SIGTERM (preemption, `kill`) set flag["sig"]: the run stops after
    the current step with its last finished epoch saved, resumable. A second SIGINT
    interrupts at once. -> a function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if flag["sig"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["sig"] = signum
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()]


def stop_requested(st):
    """Whether a stop signal arrived on any rank (one tiny all-reduce when multi-process,
    so every rank stops after the same step)."""
    stop = st["stop"]["sig"] is not None
    if st["dist"].world > 1:
        t = torch.tensor([float(stop)], device=st["y_noisy"].device)
        stop = bool(distributed.all_sum((t,), st["dist"])[0].item() > 0)
    return stop


class Stopped(Exception):
    """A stop signal was seen between two steps."""


def make_say(lead):
    """print for rank 0, nothing for the others. When stdout is closed (`train.py | head -1`),
    one warning on stderr, then the run continues silently: its files are the product."""
    state = {"open": True}

    def say(*args, **kwargs):
        if not lead or (not state["open"] and kwargs.get("file") is None):
            return
        try:
            print(*args, **kwargs)
        except BrokenPipeError:
            state["open"] = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again
            os.close(devnull)
            warn("stdout was closed (broken pipe); the run continues and writes its files")
    return say


def run(a, argv, dd=distributed.Dist()):
    flag = {"sig": None}
    restore = catch_stop_signals(flag)
    try:
        device, out, lock, ck, d, cfg, loss_fn, probe, st = start(a, argv, dd)
    except BaseException:
        restore()
        raise
    st["stop"] = flag
    try:
        return train_run(a, dd, device, out, ck, d, cfg, loss_fn, probe, st)
    finally:
        restore()
        if lock is not None:
            checkpoint.unlock_run(lock)


def initial_files(a, out, ck, meta, d, st, history, best, config):
    """Rank 0, before the first epoch: config.json, noise_report.json, metrics.jsonl and, for a
    new run, the epoch-0 checkpoint. --overwrite first moves the old run to DIR/replaced/."""
    if ck is None and a.overwrite:
        checkpoint.set_aside(out)
    checkpoint.write_json(os.path.join(out, "config.json"), meta if ck is None else resume_record(out, meta, ck, a))
    checkpoint.write_json(os.path.join(out, "noise_report.json"), d["report"])
    checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), history)
    if ck is None:
        checkpoint.save_checkpoint(os.path.join(out, "checkpoint.pt"), checkpoint_state(st, 0, history, best, config))


def update_best(best, m):
    """Best test accuracy (papers report it; chosen on the test set) and the validation-selected
    epoch (chosen on the noisy validation split: the honest number). -> new best dict."""
    best = dict(best)
    if m["test_acc"] > best["acc"]:
        best.update(acc=m["test_acc"], epoch=m["epoch"])
    if m.get("val_acc_noisy") is not None and m["val_acc_noisy"] > best.get("val_acc", -1.0):
        best.update(val_acc=m["val_acc_noisy"], val_epoch=m["epoch"], test_at_val=m["test_acc"])
    return best


def train_run(a, dd, device, out, ck, d, cfg, loss_fn, probe, st):
    """The epochs; -> exit code. A failing replacement (--overwrite) puts the old run back."""
    lead = dd.rank == 0  # only rank 0 prints and writes files
    say = make_say(lead)
    if ck is not None and ck["epoch"] >= a.epochs:  # --auto-resume of a finished run
        say(f"{out} already finished its {a.epochs} epochs (--auto-resume): nothing to do")
        return 0
    config = {k: v for k, v in vars(a).items()}
    meta = dict(config, out=out, world_size=dd.world, device_used=str(device), torch=torch.__version__,
                numpy=np.__version__, python=sys.version.split()[0], loss_hparams=cfg, n_train=len(d["y"]))
    history, best = (ck["history"], ck["best"]) if ck else ([], {"acc": -1.0, "epoch": 0})
    extended = list(ck.get("extended", [])) if ck else []
    if a.extend:
        extended.append({"at_epoch": ck["epoch"], "epochs_before": ck["config"]["epochs"], "epochs_after": a.epochs})
    try:
        if lead:
            initial_files(a, out, ck, meta, d, st, history, best, config)
        code = train_epochs(a, dd, device, out, ck, d, cfg, loss_fn, probe, st, say, history, best, config, extended)
    except (UserError, NonFiniteLoss, checkpoint.CheckpointError, OSError):
        if lead and ck is None and a.overwrite:
            checkpoint.restore_aside(out)
        raise
    if lead and code == 0 and os.path.exists(os.path.join(out, "final.json")):
        checkpoint.drop_aside(out)
    return code


def train_epochs(a, dd, device, out, ck, d, cfg, loss_fn, probe, st, say, history, best, config, extended):
    """Train from the checkpoint's epoch to a.epochs; -> exit code (0, or 130/143 when stopped by SIGINT/SIGTERM)."""
    lead = dd.rank == 0
    start_epoch = ck["epoch"] if ck else 0
    ck_path = os.path.join(out, "checkpoint.pt")
    N, B = len(d["y"]), min(a.batch_size, len(d["y"]))
    steps_per_epoch = (N - B) // B + 1
    total = a.epochs * steps_per_epoch
    delta = losses.l1_weight(a.loss, cfg)
    per_rank = f" x {dd.world} ranks (batch {B // dd.world} per rank)" if dd.world > 1 else ""
    rate = "unknown" if d["report"]["rate"] is None else f"{d['report']['rate']:.3f}"
    say(f"dcm-ref: {a.dataset} ({N} train, {len(d['y_test'])} test, noise {rate}) "
        f"{a.backbone}+{a.head} loss={a.loss} method={a.method} on {device}{per_rank} -> {out}", flush=True)
    for epoch in range(start_epoch + 1, a.epochs + 1):
        if d["pool"] is not None and d["subset_epoch"] != epoch:
            secs = data.redraw_subset(d, epoch)
            say(f"epoch {epoch:3d}: new class-balanced subset of {len(d['y'])} images decoded in {secs:.1f}s", flush=True)
        t0 = time.time()
        try:
            tr_loss, changes, n_seen = train_epoch(a, st, d, epoch, total, loss_fn, delta)
        except (KeyboardInterrupt, Stopped):
            return stopped(st, say, ck_path, epoch - 1, out)
        t_train = time.time() - t0
        for net in st["nets"]:
            distributed.average_bn_stats(net, dd)  # before eval, the probe and the checkpoint: one set of BN stats
        ev = evaluate(a, st, d, train_eval_due(a, epoch))
        ms = st["masks"][0]
        m = dict(epoch=epoch, lr=lr_at(a, st["step"] - 1, total), train_loss=tr_loss, **ev,
                 kept=dcm_ref.kept_fraction(ms.mask) if a.head in ("dfc", "dkan") else 1.0,
                 mask_change=float(np.mean([float(c) for c in changes])) if changes else 0.0, mask_updates=ms.updates,
                 **grad_error_metrics(a, st, d, probe, loss_fn),
                 seconds=time.time() - t0, samples_per_s=n_seen / max(t_train, 1e-9))
        m["eta_s"] = (a.epochs - epoch) * m["seconds"]
        best = update_best(best, m)
        history.append(m)
        state = checkpoint_state(st, epoch, history, best, config, extended)
        if lead:
            if a.save_masks:
                save_mask(out, epoch, ms.mask)
            checkpoint.save_checkpoint(ck_path, state)  # first: metrics.jsonl never shows an epoch the checkpoint lacks
            checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), history)
        say(epoch_line(a, m, probe), flush=True)
        if stop_requested(st) and epoch < a.epochs:
            return stopped(st, say, ck_path, epoch, out)
        if a.stop_after and epoch >= a.stop_after and epoch < a.epochs:
            say(f"stopped after epoch {epoch} (--stop-after); continue with --out {out} --resume")
            return 0
    final = final_metrics(a, history, best, d)
    if lead:
        checkpoint.write_json(os.path.join(out, "final.json"), final)
    val = (f"  at best val {100 * final['test_acc_at_val_best']:.2f}% (epoch {final['val_best_epoch']})"
           if "val_best_epoch" in final else "")
    say(f"done: test accuracy last {100 * final['test_acc_last']:.2f}%  best {100 * final['test_acc_best']:.2f}% "
        f"(epoch {final['best_epoch']}){val}  in {final['wall_s']:.1f}s -> {out}")
    return 0


def stopped(st, say, ck_path, epoch, out):
    """The one line of a stopped run; -> 130 (SIGINT) or 143 (SIGTERM), as a shell reports them."""
    sig = st["stop"]["sig"] or signal.SIGINT
    name = signal.Signals(sig).name
    say(f"\ninterrupted ({name}): {ck_path} holds epoch {epoch}; continue with --out {out} --resume", file=sys.stderr)
    return 128 + int(sig)


def epoch_line(a, m, probe):
    return (f"epoch {m['epoch']:3d}/{a.epochs}  lr {m['lr']:.4f}  loss {m['train_loss']:.4f}  "
            f"train(noisy) {fmt_pct(m['train_acc_noisy'])}  train(clean) {fmt_pct(m['train_acc_clean'])}  "
            + (f"val(noisy) {fmt_pct(m['val_acc_noisy'])}  " if "val_acc_noisy" in m else "") +
            f"test {fmt_pct(m['test_acc'])}  kept {m['kept']:.3f}  change {m['mask_change']:.3f}  "
            + (f"gcos {m['grad_cos_last']:+.2f}  " if probe is not None else "") +
            f"{m['seconds']:.1f}s  eta {m['eta_s']:.0f}s")


def final_metrics(a, history, best, d):
    """final.json: last and best (test-selected) accuracy, and with --val-frac the epoch
    selected on the noisy validation split and its test accuracy (README: the honest number)."""
    final = dict(test_acc_last=history[-1]["test_acc"], test_acc_best=best["acc"], best_epoch=best["epoch"],
                 epochs=a.epochs, wall_s=float(sum(h["seconds"] for h in history)),
                 train_samples_per_s=float(np.mean([h["samples_per_s"] for h in history])), noise_rate=d["report"]["rate"])
    if "val_epoch" in best:
        final.update(val_best_epoch=best["val_epoch"], val_acc_best=best["val_acc"], test_acc_at_val_best=best["test_at_val"])
    return final


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:  # a preset's flags go first, so the flags typed after them win
        argv, preset = presets.expand(argv)
    except presets.PresetError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    a = build_parser().parse_args(argv)
    if a.list_presets:
        print(presets.describe())
        return 0
    if a.preset != preset:
        print(f"train.py: error: write --preset in full (got an abbreviation for {a.preset!r})", file=sys.stderr)
        return 2
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    try:
        dd = distributed.dist_from_env(os.environ)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    if dd.world > 1:
        distributed.init_distributed(dd)
    who = f" (rank {dd.rank})" if dd.rank > 0 else ""
    try:
        return run(a, argv, dd)
    except PeerFailed:
        return 2  # the failing rank has printed why
    except (UserError, data.DataError, checkpoint.CheckpointError) as e:  # DataError: an image unreadable at a redraw
        print(f"train.py: error{who}: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:  # one rank's loss: torchrun then stops the others
        print(f"train.py: error{who}: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # writing the run's files: a full disk, a folder removed under the run
        print(f"train.py: error{who}: cannot write {e.filename or 'a run file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"train.py: interrupted{who}; the last finished epoch's checkpoint (if any) is kept", file=sys.stderr)
        return 130
    finally:
        if dd.world > 1:
            distributed.close()


if __name__ == "__main__":
    sys.exit(main())
