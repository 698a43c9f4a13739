"""The command-line side of train.py: its flags, flag checks, warnings, the device, rank-0
output, stop signals and exit codes. Nothing here is part of the DCM method (Zhang et al.,
arXiv 2508.09697); it is what makes a mistake one clear line and an interrupted run resumable (README).

    args, argv, dist = parse(argv)                   # presets expanded, torchrun joined (or an exit code)
    with ExitCode(dist) as result:                   # an error -> one line on stderr and result.code
        result.code = train.train(args, argv, dist)
    with agreed(dist): ...                           # a UserError on any rank stops every rank
    check_args(args)                                 # UserError: one line, exit 2
    for msg in flag_warnings(args, typed): warn(msg) # typed flags that do nothing here
    restore = catch_stop_signals(flag)               # SIGINT/SIGTERM: stop after this step
"""
import argparse
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

import checkpoint
import dcm_ref
import data
import diagnostics
import distributed
import losses
import nets
import presets

HEADS = nets.HEADS
METHODS = ("standard", "coteaching", "elr")
NOISES = ("none", "symmetric", "asymmetric", "pairflip", "instance", "cifar100-superclass")
SEED_MAX = 2 ** 32  # seeds are in [0, 2^32): seed * 100003 + epoch must fit torch's 64-bit generator seed


class UserError(Exception):
    """A mistake in the command line or the data: reported in one line, exit 2."""


class PeerFailed(Exception):
    """Another rank failed (during setup, or rank 0 writing a file after the last collective:
    on_rank0) and reported it; this rank exits quietly (exit 2)."""


class NonFiniteLoss(Exception):
    """The training loss became NaN or inf: reported in one line, exit 3; the last checkpoint is kept."""


# ----------------------------------------------------------------------------- Flags

DESCRIPTION = "Train a classifier on noisy labels, with or without Dynamic Connection Masking."  # --help's first line


def build_parser():
    """train.py's flags (python train.py --help), in groups: data, noise, model, DCM, loss, optimisation, run, diagnostics, presets."""
    p = OneLineErrors(description=DESCRIPTION, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help=f"one of {', '.join(data.ALL_DATASETS)}")
    g.add_argument("--data-dir", default=None, help=f"dataset folder (default: ${data.DATA_ENV}/<dataset> when that variable "
                   f"is set, else data/<dataset> in the current folder; then a system copy: "
                   f"{data.DEFAULT_DIRS['fashion-mnist']}; digits: embedded/)")
    g.add_argument("--download", action="store_true", help=f"fetch the dataset's missing files into that folder and verify "
                   f"every file against its published checksum before training ({', '.join(data.DOWNLOADABLE)})")
    g.add_argument("--mirror", default=None, metavar="URL", help="with --download: fetch each file from URL/<file name> "
                   "instead of its official address (same checksums)")
    g.add_argument("--noisy-labels-file", default=None, help="CIFAR-N label file (default: CIFAR-10_human.pt / CIFAR-100_human.pt next to the CIFAR folder, where --download puts it)")
    g.add_argument("--noisy-labels", default=None, help="CIFAR-N label set: aggre|worst|rand1|rand2|rand3 (10) or noisy100 (100)")
    g.add_argument("--limit-train", type=int, default=0, help="use a seeded class-stratified subset of N training samples (0 = all)")
    g.add_argument("--limit-test", type=int, default=0, help="test on a class-stratified subset of N test samples, the same for every seed (0 = all)")
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
    g.add_argument("--noise", default="symmetric", choices=NOISES, help="label-noise model (none: the dataset's own labels)")
    g.add_argument("--noise-rate", type=float, default=0.4, help="fraction of labels flipped, in [0, 1)")
    g.add_argument("--noise-include-true", action="store_true", help="symmetric noise may keep the true class (ELR/DivideMix convention)")
    g.add_argument("--noise-sampling", default="exact", choices=("exact", "bernoulli"), help="exact = each class i flips exactly round((1-T[i,i])*n_i) labels (half to even), spread over the targets by largest remainder")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="mlp", help=f"one of {', '.join(nets.BACKBONES)}")
    g.add_argument("--head", default="dfc", help="fc | dfc (DCM on FC) | kan | dkan (DCM on KAN)")
    g.add_argument("--pretrained", default=None, help="backbone weights: a state dict file in torchvision's key layout (fc.* ignored), e.g. ImageNet ResNet-50")
    g.add_argument("--kan-grid", type=int, default=5, help="KAN head: B-spline grid intervals")
    g.add_argument("--kan-order", type=int, default=3, help="KAN head: B-spline order")
    g = p.add_argument_group("DCM (Fig. 2, Eq. 2; docs/design.md §2)")
    g.add_argument("--keep", type=float, default=0.1, help="fraction of head edges kept, in (0, 1]; 1 = no masking")
    g.add_argument("--dcm-scope", default="row", choices=("row", "global"), help="row: each class keeps max(1, round(keep*d)) inputs; global: max(1, round(keep*C*d)) edges overall")
    g.add_argument("--dcm-interval", type=int, default=1, help="recompute the mask every t optimizer steps")
    g.add_argument("--dcm-warmup", type=int, default=0, help="optimizer steps with the full head before masking starts")
    g.add_argument("--dcm-stats", default="batch", choices=("batch", "interval"), help="score edges on the current batch (Eq. 2) or on moments pooled since the last update")
    g.add_argument("--dcm-eval", default="full", choices=("full", "masked"), help="evaluate with the full head (paper default) or with the last mask")
    g.add_argument("--dcm-freeze", action="store_true", help="masked head weights stay exactly unchanged by a step (no weight decay/momentum drift)")
    g.add_argument("--dcm-score", default="std", choices=dcm_ref.SCORES,
                   help="what ranks the edges: std = Eq. 2 (|W|·std_b v); ablations (docs/design.md §2): random (a random "
                        "k-subset per class, redrawn at each update, seeded by --seed), magnitude (|W|), feature (std_b v, same inputs for every class)")
    g.add_argument("--head-dropout", type=float, default=0.0, help="dropout probability on the head's input in training, any head (0 = off)")
    g = p.add_argument_group("loss and method (docs/design.md §4)")
    g.add_argument("--loss", default="ce", help=f"one of {', '.join(sorted(losses.LOSSES))}")
    g.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE", help="override a loss hyper-parameter, e.g. --loss-arg q=0.5 (repeatable)")
    g.add_argument("--method", default="standard", help="standard | coteaching (two networks) | elr (early-learning regularisation)")
    g.add_argument("--forget-rate", type=float, default=None, help="co-teaching tau (default: the noise rate)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="optimizer")
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="default 1e-4, and 0 for anl_* losses (their L1 term replaces it)")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (split over torchrun ranks)")
    g.add_argument("--epochs", type=int, default=30, help="training epochs (the LR schedule's length)")
    g.add_argument("--schedule", default="cosine", choices=("cosine", "step", "none"), help="step = x0.1 at 50%% and 75%% of training")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm (0 = off)")
    g.add_argument("--seed", type=int, default=0, help="seeds the model, the noise, the batches and the augmentation")
    g.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bf16 autocast on CUDA")
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
                        f"<= {diagnostics.PROBE_SIZE} corrupted training samples; default: on when some training labels differ from the clean ones "
                        f"(off for webvision-mini/clothing1m: their clean training labels are unknown)")
    g.add_argument("--train-eval-every", type=int, default=1, metavar="N",
                   help="the pass over the whole training set (train accuracy vs noisy/clean labels, confidence) every N epochs "
                        "and at the last; 0 = never (its metrics are null). Saves a forward pass over the training set, e.g. for ResNet-50 at 224x224")
    g.add_argument("--save-masks", action="store_true", help="Fig. 5: write DIR/masks/epoch_XXX.npz (the first network's C x d bool mask) after every epoch")
    g = p.add_argument_group("presets (presets.py)")
    g.add_argument("--preset", default=None, metavar="NAME", help="fill in the flags of a paper protocol; flags typed explicitly override it; recorded in config.json")
    g.add_argument("--list-presets", action="store_true", help="print every preset with its flags and source, and exit")
    return p


def defaults():
    """{flag dest: default} of every flag (names a run without --out: runfolder.default_out)."""
    return vars(build_parser().parse_args([]))


def parse(argv):
    """train.py's command line -> (args, argv with the preset's flags, distributed.Dist), or an exit
    code: 0 after --list-presets, 2 after a one-line error. Sets --threads and joins the torchrun
    group (world size > 1): ExitCode leaves it."""
    try:  # a preset's flags go first, so the flags typed after them win
        argv, preset = presets.expand(argv)
    except presets.PresetError as e:
        emit(f"train.py: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(presets.describe())
        return 0
    if args.preset != preset:
        emit(f"train.py: error: write --preset in full (got an abbreviation for {args.preset!r})", file=sys.stderr)
        return 2
    if 0 < args.threads <= THREADS_MAX:   # out of range: check_args says so in one line
        torch.set_num_threads(args.threads)
    try:
        dist = distributed.dist_from_env(os.environ)
    except ValueError as e:
        emit(f"train.py: error: {e}", file=sys.stderr)
        return 2
    if dist.world > 1:
        distributed.init_distributed(dist)
    return args, argv, dist


# ----------------------------------------------------------------------------- Flag checks

FLOAT32_MAX = float(torch.finfo(torch.float32).max)   # optimizer hyper-parameters meet float32 tensors
THREADS_MAX = 1024   # torch.set_num_threads(100000) crashes the process (segfault) before any message


def check_args(args):
    """Validate flag values; raises UserError with one line."""
    checks = [
        (args.dataset in data.ALL_DATASETS, f"--dataset {args.dataset!r} is unknown; expected one of {', '.join(data.ALL_DATASETS)}"),
        (args.backbone in nets.BACKBONES, f"--backbone {args.backbone!r} is unknown; expected one of {', '.join(nets.BACKBONES)}"),
        (args.head in HEADS, f"--head {args.head!r} is unknown; expected one of {', '.join(HEADS)}"),
        (args.method in METHODS, f"--method {args.method!r} is unknown; expected one of {', '.join(METHODS)}"),
        (args.loss in losses.LOSSES, f"--loss {args.loss!r} is unknown; expected one of {', '.join(sorted(losses.LOSSES))}"),
        (0.0 <= args.noise_rate < 1.0, f"--noise-rate must be in [0, 1), got {args.noise_rate}"),
        (0.0 < args.keep <= 1.0, f"--keep must be in (0, 1], got {args.keep}"),
        (0.0 <= args.head_dropout < 1.0, f"--head-dropout must be in [0, 1), got {args.head_dropout}"),
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 2, f"--batch-size must be >= 2 (batch statistics), got {args.batch_size}"),
        (0 < args.lr <= FLOAT32_MAX, f"--lr must be > 0 and a float32 number (<= {FLOAT32_MAX:.3g}), got {args.lr}"),
        (args.dcm_interval >= 1, f"--dcm-interval must be >= 1, got {args.dcm_interval}"),
        (args.dcm_warmup >= 0, f"--dcm-warmup must be >= 0, got {args.dcm_warmup}"),
        (args.limit_train >= 0, f"--limit-train must be >= 0, got {args.limit_train}"),
        (args.limit_test >= 0, f"--limit-test must be >= 0, got {args.limit_test}"),
        (0.0 <= args.val_frac < 1.0, f"--val-frac must be in [0, 1), got {args.val_frac}"),
        (args.weight_decay is None or 0 <= args.weight_decay <= FLOAT32_MAX,
         f"--weight-decay must be >= 0 and a float32 number (<= {FLOAT32_MAX:.3g}), got {args.weight_decay}"),
        (args.grad_clip >= 0, f"--grad-clip must be >= 0, got {args.grad_clip}"),
        (args.train_eval_every >= 0, f"--train-eval-every must be >= 0 (0 = never), got {args.train_eval_every}"),
        (not args.save_masks or args.head not in HEADS or args.head in nets.DCM_HEADS, f"--save-masks needs a DCM head (--head dfc or dkan), got --head {args.head}"),
        (args.samples_per_epoch >= 0, f"--samples-per-epoch must be >= 0, got {args.samples_per_epoch}"),
        (not args.subset_once or args.samples_per_epoch > 0, "--subset-once needs --samples-per-epoch N (the subset to keep)"),
        (args.image_size is None or args.image_size >= 8, f"--image-size must be >= 8, got {args.image_size}"),
        (args.pretrained is None or os.path.isfile(args.pretrained), f"--pretrained {args.pretrained} does not exist (or is not a file)"),
        (args.kan_grid >= 1, f"--kan-grid must be >= 1 (B-spline grid intervals), got {args.kan_grid}"),
        (args.kan_order >= 0, f"--kan-order must be >= 0 (B-spline order), got {args.kan_order}"),
        (args.forget_rate is None or 0.0 <= args.forget_rate < 1.0, f"--forget-rate must be in [0, 1), got {args.forget_rate}"),
        (0.0 <= args.momentum < 1.0, f"--momentum must be in [0, 1), got {args.momentum}"),
        (0 <= args.seed < SEED_MAX, f"--seed must be in [0, 2^32), got {args.seed}"),
        (0 <= args.threads <= THREADS_MAX, f"--threads must be in [0, {THREADS_MAX}] (0 = torch's default), got {args.threads}"),
        (args.out != "", "--out is empty; give a folder, or leave --out out for the default runs/<name>"),
        (args.stop_after >= 0, f"--stop-after must be >= 0 (0 = never), got {args.stop_after}"),
        (args.decode_workers >= 1, f"--decode-workers must be >= 1, got {args.decode_workers}"),
        (not (args.resume and args.overwrite), "--resume continues the run in --out and --overwrite replaces it; give one of them"),
        (not (args.auto_resume and (args.resume or args.overwrite)), "--auto-resume already resumes or starts fresh; drop --resume/--overwrite"),
        (not args.extend or args.resume, "--extend needs --resume (it lengthens an existing run)"),
        (args.mirror is None or args.download, "--mirror needs --download (it says where to download from)"),
        (args.mirror is None or args.mirror.startswith(("http://", "https://", "file://")),
         f"--mirror must be an http://, https:// or file:// URL, got {args.mirror!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if args.dataset in data.REAL_NOISE_DATASETS and args.noise != "none":
        raise UserError(f"--dataset {args.dataset} brings its own human noise; add --noise none (got --noise {args.noise})")
    image_flags = [f for f, v in (("--image-size", args.image_size), ("--samples-per-epoch", args.samples_per_epoch),
                                  ("--train-list", args.train_list), ("--test-list", args.test_list),
                                  ("--imagenet-val-dir", args.imagenet_val_dir)) if v]
    if image_flags and args.dataset not in data.IMAGE_DATASETS:
        raise UserError(f"{', '.join(image_flags)} apply to {' and '.join(data.IMAGE_DATASETS)} only, not to --dataset {args.dataset}")


# Flags that do nothing in some configurations: (flag dest, applies?(args), why not).
DCM_ONLY = "only DCM heads (dfc, dkan) are masked"


def _dcm_head(args):
    return args.head in nets.DCM_HEADS


NO_EFFECT = (
    *((key, _dcm_head, DCM_ONLY) for key in ("keep", "dcm_scope", "dcm_interval", "dcm_warmup", "dcm_stats",
                                              "dcm_eval", "dcm_freeze", "dcm_score")),
    ("kan_grid", lambda args: args.head in ("kan", "dkan"), "only KAN heads (kan, dkan) have a grid"),
    ("kan_order", lambda args: args.head in ("kan", "dkan"), "only KAN heads (kan, dkan) have a spline order"),
    ("forget_rate", lambda args: args.method == "coteaching", "it is co-teaching's tau (--method coteaching)"),
    ("noise_rate", lambda args: args.noise != "none", "--noise none corrupts no labels"),
    ("noise_include_true", lambda args: args.noise == "symmetric", "it applies to --noise symmetric only"),
    ("momentum", lambda args: args.optimizer == "sgd", "it is SGD's momentum (--optimizer sgd)"),
    ("download", lambda args: args.dataset != "digits", "digits is embedded in the repository"),
)


def flag_warnings(args, typed):
    """One line per typed flag that has no effect in this configuration (args passed check_args).
    typed: set of dests."""
    out = []
    for key, applies, why in NO_EFFECT:
        if key in typed and not applies(args):
            out.append(f"--{key.replace('_', '-')} has no effect here: {why}")
    return out + preset_warnings(args)


def preset_warnings(args):
    """A --loss typed over a preset whose --weight-decay was set for a loss of the other kind:
    ANL's losses replace weight decay by their L1 term (weight decay 0), the others use it."""
    if args.preset is None or presets.setting(args.preset, "--weight-decay") is None:
        return []
    wd, loss = float(presets.setting(args.preset, "--weight-decay")), presets.setting(args.preset, "--loss") or "ce"
    if args.weight_decay != wd or (args.loss in losses.L1_LOSSES) == (loss in losses.L1_LOSSES):
        return []
    usual = "0 (its L1 term replaces it)" if args.loss in losses.L1_LOSSES else f"{losses.DEFAULT_WEIGHT_DECAY:g} or the protocol's"
    return [f"--preset {args.preset} sets --weight-decay {wd:g} for --loss {loss}; --loss {args.loss} usually trains "
            f"with {usual}: type --weight-decay to choose"]


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
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):   # mps, xla, meta, ...: torch knows them, train.py runs on CPU and CUDA
        raise UserError(f"--device {name}: train.py runs on cpu or cuda; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1}")
    return device


def explicit_flags(parser, argv):
    """Names (dests) of the flags the user typed in argv, to tell them apart from defaults on --resume.
    parser's defaults are suppressed for this parse only (it is left as it was)."""
    defaults = [action.default for action in parser._actions]
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in zip(parser._actions, defaults):
            action.default = default


def check_flags(args, typed, dd):
    """The checks that need no data, in order: values, no-effect warnings (rank 0), the device,
    --loss-arg. -> (device, loss hyper-parameter overrides)."""
    check_args(args)
    for msg in flag_warnings(args, typed) if dd.rank == 0 else ():
        warn(msg)
    device = pick_device(args.device, dd)
    if args.amp and device.type != "cuda" and dd.rank == 0:
        warn(f"--amp has no effect on {device.type}: train.py's bf16 autocast is for CUDA")
    if device.type == "cuda" and dd.world > 1:
        torch.cuda.set_device(device)  # NCCL talks through the current device
    hp = parse_loss_args(args.loss_arg)
    try:
        losses.loss_config(args.loss, 10, "cifar10", noise=args.noise, **hp)  # validates names before the data
    except ValueError as e:
        raise UserError(str(e)) from None
    return device, hp


def check_data_sizes(args, d, dd):
    """The checks that need the data's sizes (d: a data.TrainData): --limit-train, --val-frac,
    --batch-size (the global batch must split into equal per-rank shards of >= 2 samples)."""
    n, C = len(d.y), d.C
    n_all = n + (len(d.val[1]) if d.val is not None else 0)
    for flag, n_limit in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test)):
        if n_limit and n_limit < C:   # a class-stratified subset needs a sample of every class
            raise UserError(f"{flag} {n_limit} is below the {C} classes of {args.dataset}; use >= {C}")
    if args.limit_train and args.limit_train > n_all and d.pool is None:
        warn(f"--limit-train {args.limit_train} exceeds the {n_all} training samples of {args.dataset}; using all {n_all}")
    if n < 2:  # a batch needs 2 samples (batch statistics)
        raise UserError(f"--val-frac {args.val_frac:g} leaves {n} training sample(s) of {n_all}; use a smaller --val-frac"
                        if args.val_frac > 0 else f"{args.dataset} has {n} training sample(s); at least 2 are needed")
    if args.batch_size > n:
        warn(f"--batch-size {args.batch_size} exceeds the {n} training samples; each epoch is one batch of {n}")
    if len(torch.unique(d.y_noisy)) < 2:   # nothing to learn, and noise rates are meaningless
        warn(f"every training label is class {int(d.y_noisy[0])}: the data (or --noisy-labels-file) holds one class")
    B = min(args.batch_size, n)
    if dd.world > 1 and (B % dd.world or B // dd.world < 2):
        raise UserError(f"--batch-size {B} is the global batch and must split into {dd.world} equal "
                        f"per-rank shards of >= 2 samples; use a multiple of {dd.world} >= {2 * dd.world}")


# ----------------------------------------------------------------------------- Errors and exit codes

@contextmanager
def agreed(dd):
    """Around a run's setup, on every rank: when any rank raised UserError or PeerFailed, all stop and
    only the lowest failing rank reports (the others raise PeerFailed: a quiet exit 2). The agreement
    (one all-reduce, also when none failed) is the barrier that keeps rank 0 from writing into --out
    before every rank has read it."""
    err = None
    try:
        yield
    except (UserError, PeerFailed) as e:   # PeerFailed: rank 0 could not claim the run folder
        err = e
    first = distributed.first_failure(err is not None, dd)
    if first == dd.rank:
        raise err
    if first >= 0:
        raise PeerFailed()


class ExitCode:
    """Around train.train in main: an error becomes one line on stderr and an exit code in .code
    (exit_code), a Python warning (e.g. noise.py's) one "train.py: warning:" line, and the torchrun
    group is left at the end. Other exceptions pass (a traceback)."""

    def __init__(self, dd):
        self.dd, self.code = dd, None

    def __enter__(self):
        self._shown = warnings.showwarning
        warnings.showwarning = lambda message, *rest, **kw: warn(" ".join(str(message).split()))
        return self

    def __exit__(self, kind, e, tb):
        try:
            if e is not None:
                self.code = exit_code(e, self.dd)
            return e is not None and self.code is not None
        finally:
            warnings.showwarning = self._shown
            if self.dd.world > 1:
                distributed.close()


def exit_code(e, dd):
    """The exit code of an exception that ended a run, after its one line on stderr; None when it is
    not one of the run's errors. 2: a flag, data, file or peer; 3: a non-finite loss; 130: Ctrl-C."""
    who = f" (rank {dd.rank})" if dd.rank > 0 else ""
    if isinstance(e, PeerFailed):
        return 2  # the failing rank has printed why
    if isinstance(e, (distributed.PeerLost, UserError, data.DataError, checkpoint.CheckpointError, NonFiniteLoss)):
        # PeerLost: a collective failed: another rank stopped (and printed why). DataError: an image
        # unreadable at a redraw. NonFiniteLoss: one rank's; the others stop at their next collective (PeerLost)
        emit(f"train.py: error{who}: {e}", file=sys.stderr)
        return 3 if isinstance(e, NonFiniteLoss) else 2
    if isinstance(e, OSError):  # writing the run's files: a full disk, a folder removed under the run
        emit(f"train.py: error{who}: cannot write {e.filename or 'a run file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    if isinstance(e, KeyboardInterrupt):  # a second Ctrl-C, or one before training started
        emit(f"train.py: interrupted{who}; the last finished epoch's checkpoint (if any) is kept", file=sys.stderr)
        return 130
    return None


# ----------------------------------------------------------------------------- Output and stop signals

def emit(*args, file=None, **kwargs):
    """print(*args) to `file` (default stdout). A closed pipe (`train.py 2>&1 | head -5`) does not
    stop the run: the stream is sent to /dev/null for the rest of it. -> False when it was closed."""
    stream = sys.stdout if file is None else file
    try:
        print(*args, file=stream, **kwargs)
        return True
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # later writes and the flush at exit go nowhere, without an error
        os.close(devnull)
        return False


def warn(msg):
    emit(f"train.py: warning: {msg}", file=sys.stderr, flush=True)


def make_say(lead):
    """print for rank 0, nothing for the others. When stdout is closed (`train.py | head -1`),
    one warning on stderr (if it is open), then the run continues silently: its files are the product."""
    state = {"open": True}

    def say(*args, **kwargs):
        if not lead or (not state["open"] and kwargs.get("file") is None):
            return
        if not emit(*args, **kwargs) and kwargs.get("file") is None:
            state["open"] = False
            warn("stdout was closed (broken pipe); the run continues and writes its files")
    return say


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose own errors (a bad value, an unknown or ambiguous flag) are one line, exit 2,
    like train.py's other errors; the usage is in --help."""

    def error(self, message):
        self.exit(2, f"train.py: error: {message} (python train.py --help lists the flags)\n")

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        for a in self._actions:   # `--kan-grid=--` gives a list, not a type error (argparse's "--" handling)
            if a.type in (int, float) and isinstance(getattr(ns, a.dest, None), list):
                self.error(f"argument {a.option_strings[0]}: expected a number, got {getattr(ns, a.dest)!r}")
        return ns


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, except None: such flags say in their help what unset means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


@dataclass
class StopFlag:
    """Set by the stop-signal handler: the signal that asked the run to stop, or None."""
    signum: Optional[int] = None


def catch_stop_signals(flag):
    """SIGINT (Ctrl-C) and SIGTERM (preemption, `kill`) set flag.signum (a StopFlag): the run stops after
    the current step with its last finished epoch saved, resumable. A second SIGINT
    interrupts at once. -> a function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()]


def stop_requested(st):
    """Whether a stop signal arrived on any rank (st: a runfolder.TrainState). Multi-process: one
    tiny all-reduce of the signal number (MAX: SIGTERM 15 over SIGINT 2, 0 for none), so every rank
    stops after the same step, and st.stop.signum becomes that signal on every rank: stopped()
    then reports it and exits with 128 + its number everywhere, also on ranks that got none."""
    sig = st.stop.signum or 0
    if st.dist.world > 1:
        sig = distributed.max_over_ranks(sig, st.dist, st.y_noisy.device)
        if sig:
            st.stop.signum = sig
    return bool(sig)


def on_rank0(write, dd):
    """write() on rank 0 only (the rank that writes files), then an agreement (one all-reduce): when it
    raised, rank 0 raises it again and every other rank raises PeerFailed (exit 2, quietly). For
    rank 0's writes after the run's last collective (final.json), where no later collective would
    fail (distributed.PeerLost) and stop the others with a non-zero exit."""
    err = None
    if dd.rank == 0:
        try:
            write()
        except BaseException as e:
            err = e
    if distributed.first_failure(err is not None, dd) >= 0:
        if err is not None:
            raise err
        raise PeerFailed()


class Stopped(Exception):
    """A stop signal was seen between two steps."""


def stopped(st, say, ck_path, epoch, out):
    """The one line of a stopped run; -> 130 (SIGINT) or 143 (SIGTERM), as a shell reports them."""
    sig = st.stop.signum or signal.SIGINT
    name = signal.Signals(sig).name
    say(f"\ninterrupted ({name}): {ck_path} holds epoch {epoch}; continue with --out {out} --resume", file=sys.stderr)
    return 128 + int(sig)

