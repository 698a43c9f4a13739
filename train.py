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

Multi-process (torchrun, docs/design.md §2, docs/multiprocess.md): --batch-size is the GLOBAL batch,
split over the ranks; gradients averaged, DCM moments summed: every rank has the same mask.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

import checkpoint
import data
import dcm_ref
import diagnostics
import layers
import distributed
import losses
import nets
import presets
import realworld
import runfolder
import train_cli
from train_cli import NonFiniteLoss, PeerFailed, UserError


# ----------------------------------------------------------------------------- Flags

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=train_cli.HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help=f"one of {', '.join(data.ALL_DATASETS)}")
    g.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's usual place, see README)")
    g.add_argument("--noisy-labels-file", default=None, help="CIFAR-N label file (CIFAR-10_human.pt / CIFAR-100_human.pt)")
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
    g.add_argument("--noise", default="symmetric", choices=train_cli.NOISES, help="label-noise model (none: the dataset's own labels)")
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


# ----------------------------------------------------------------------------- Setup

@dataclass
class Run:
    """What setup() hands to the epoch loop, the same on every rank (but `lock`)."""
    device: torch.device
    out: str                           # the run folder
    lock: Optional[checkpoint.Lock]    # the folder's lock, held by rank 0 only
    resumed: Optional[dict]            # the verified checkpoint of a resumed run, else None
    data: data.TrainData               # data.prepare_training_data: x, y, y_noisy, x_test, y_test, report, ...
    loss_config: dict                  # the loss's hyper-parameters (config.json: loss_hparams)
    loss_fn: Callable                  # per-sample loss: logits (B, C), labels (B,) -> (B,)
    probe: Optional[torch.Tensor]      # Fig. 3 probe-set indices, or None when off
    state: runfolder.TrainState        # head, nets, opts, masks, step, ELR memory (init_state)


def setup(args, argv, dist):
    """Everything before the first step, on every rank -> Run. Then the ranks agree: when any
    rank failed, all stop and only the lowest failing rank reports. The agreement is also the
    barrier that keeps rank 0 from writing into --out before every rank has read it."""
    err, job = None, None
    try:
        job = prepare(args, argv, dist)
    except (UserError, PeerFailed) as e:   # PeerFailed: rank 0 could not claim the run folder
        err = e
    first = distributed.first_failure(err is not None, dist)
    if first >= 0 and job is not None and job.lock is not None:
        checkpoint.unlock_run(job.lock)
    if first == dist.rank:
        raise err
    if first >= 0:
        raise PeerFailed()
    return job


def prepare(args, argv, dist):
    """Flags, device, run folder, checkpoint, data, probe set and initial state -> Run; raises
    UserError on bad input (and then releases the folder). Flag errors come before the run
    folder is touched and before the data is loaded."""
    typed = train_cli.explicit_flags(build_parser(), argv)
    device, loss_overrides = train_cli.check_flags(args, typed, dist)
    out, lock, resumed = runfolder.open_run(args, typed, vars(build_parser().parse_args([])), device, dist)
    try:
        d, loss_config, loss_fn = load_data(args, device, loss_overrides)
        train_cli.check_data_sizes(args, d, dist)
        probe = diagnostics.grad_probe(args, d)
        return Run(device, out, lock, resumed, d, loss_config, loss_fn, probe, init_state(args, d, device, resumed, dist))
    except BaseException:
        if lock is not None:
            checkpoint.unlock_run(lock)
        raise


def load_data(args, device, loss_overrides):
    """data.prepare_training_data and the loss -> (data, loss config, loss fn)."""
    try:
        d = data.prepare_training_data(data.DataConfig.from_flags(args), device)
        loss_config = losses.loss_config(args.loss, d.C, args.dataset, noise=args.noise, **loss_overrides)
        loss_fn = losses.make_loss(args.loss, d.C, args.dataset, noise=args.noise, **loss_overrides)
    except (data.DataError, ValueError) as e:  # ValueError: noise/loss validation (rates, maps, names)
        raise UserError(str(e)) from None
    return d, loss_config, loss_fn


def init_state(args, d, device, resumed, dist=distributed.Dist()):
    """-> runfolder.TrainState: networks (their heads run the DCM step), optimizers (DCM heads attached:
    the schedule advances at each step), ELR memory; from the checkpoint `resumed` when resuming.
    The seed is the same on every rank, so every rank builds the same networks."""
    torch.manual_seed(args.seed)
    n_nets = 2 if args.method == "coteaching" else 1
    pretrained = args.pretrained if resumed is None else None  # a resumed run's weights are in its checkpoint
    networks = [build_net(args, d.in_shape, d.C, pretrained).to(device) for _ in range(n_nets)]
    opts = [make_optimizer(args, net) for net in networks]
    for net, opt in zip(networks, opts):
        for m in layers.dcm_modules(net):
            m.all_reduce = lambda mm: distributed.all_sum(mm, dist)   # global-batch moments; a lost peer is one line
        if args.head in nets.DCM_HEADS:
            layers.attach(net, opt, freeze=args.dcm_freeze)
        if args.compile:
            net.compile_backbone()
    state = runfolder.TrainState(nets=networks, opts=opts, y_noisy=d.y_noisy, dist=dist)
    if args.method == "elr":
        state.elr_t = torch.zeros(d.n_ids, d.C, device=device)
        state.elr_hp = {k: v for k, v in losses.loss_config("elr", d.C, args.dataset, noise=args.noise).items() if k in ("beta", "lam")}
    if resumed is not None:
        runfolder.restore_state(state, resumed, d.y_noisy, device)
    return state


# ----------------------------------------------------------------------------- Run: the epoch loop

def run(args, argv, dist=distributed.Dist()):
    """setup(), then the epochs with SIGINT/SIGTERM caught; the run folder is unlocked at the end. -> exit code."""
    flag = train_cli.StopFlag()
    restore = train_cli.catch_stop_signals(flag)
    try:
        job = setup(args, argv, dist)
    except BaseException:
        restore()
        raise
    job.state.stop = flag
    try:
        return train_run(args, dist, job)
    finally:
        restore()
        if job.lock is not None:
            checkpoint.unlock_run(job.lock)


def train_run(args, dist, job):
    """The run's files and its epochs; -> exit code. A failing replacement (--overwrite) puts the old run back."""
    lead, resumed, out = dist.rank == 0, job.resumed, job.out  # only rank 0 prints and writes files
    say = train_cli.make_say(lead)
    if resumed is not None and resumed["epoch"] >= args.epochs and checkpoint.finished(out):  # --auto-resume
        say(f"{out} already finished its {args.epochs} epochs (--auto-resume): nothing to do")
        return 0
    log = runfolder.RunLog.start(args, resumed)
    try:
        if lead:
            meta = runfolder.run_meta(log.config, out, dist, job.device, job.loss_config, len(job.data.y))
            runfolder.initial_files(args, out, resumed, meta, job.data, job.state, log)
        code = train_epochs(args, dist, job, say, log)
    except Exception:   # not a stop (Ctrl-C, SIGTERM: resumable, so the old run waits in DIR/replaced/)
        if lead and resumed is None and args.overwrite:
            checkpoint.restore_aside(out)
        raise
    if lead and code == 0 and checkpoint.finished(out):
        checkpoint.drop_aside(out)
    return code


def train_epochs(args, dist, job, say, log):
    """Train from the checkpoint's epoch to --epochs, recording each epoch in log (a runfolder.RunLog);
    -> exit code (0, or 130/143 when stopped by SIGINT/SIGTERM)."""
    lead, d, state, out = dist.rank == 0, job.data, job.state, job.out
    ck_path = os.path.join(out, "checkpoint.pt")
    N, B = len(d.y), min(args.batch_size, len(d.y))
    total = args.epochs * ((N - B) // B + 1)  # optimizer steps of the whole run (the LR schedule's length)
    delta = losses.l1_weight(args.loss, job.loss_config)
    say(diagnostics.start_line(args, d, job.device, dist, out), flush=True)
    for epoch in range((job.resumed["epoch"] if job.resumed else 0) + 1, args.epochs + 1):
        if d.pool is not None and d.subset_epoch != epoch:
            secs = data.redraw_subset(d, epoch)
            say(f"epoch {epoch:3d}: new class-balanced subset of {len(d.y)} images decoded in {secs:.1f}s", flush=True)
        t0 = time.time()
        try:
            train_loss, changes, n_seen = train_epoch(args, state, d, epoch, total, job.loss_fn, delta)
        except (KeyboardInterrupt, train_cli.Stopped):
            return train_cli.stopped(state, say, ck_path, epoch - 1, out)
        t_train = time.time() - t0
        for net in state.nets:
            distributed.average_bn_stats(net, dist)  # before eval, the probe and the checkpoint: one set of BN stats
        measured = diagnostics.evaluate(args, state, d, diagnostics.train_eval_due(args, epoch))
        head = state.nets[0].head
        dcm = isinstance(head, layers.DCMModule)
        row = dict(epoch=epoch, lr=lr_at(args, state.step - 1, total), train_loss=train_loss, **measured,
                   kept=dcm_ref.kept_fraction(head.mask) if dcm else 1.0,
                   mask_change=float(np.mean([float(c) for c in changes])) if changes else 0.0,
                   mask_updates=head.updates if dcm else 0, **diagnostics.grad_error_metrics(args, state, d, job.probe, job.loss_fn),
                   seconds=time.time() - t0, samples_per_s=n_seen / max(t_train, 1e-9))
        row["eta_s"] = (args.epochs - epoch) * row["seconds"]
        log.add(row)
        snapshot = runfolder.checkpoint_state(state, epoch, log)
        if lead:
            if args.save_masks:
                diagnostics.save_mask(out, epoch, head.mask)
            checkpoint.save_checkpoint(ck_path, snapshot)  # first: metrics.jsonl never shows an epoch the checkpoint lacks
            checkpoint.write_jsonl(os.path.join(out, "metrics.jsonl"), log.history)
        say(diagnostics.epoch_line(args, row, job.probe), flush=True)
        if train_cli.stop_requested(state) and epoch < args.epochs:
            return train_cli.stopped(state, say, ck_path, epoch, out)
        if args.stop_after and epoch >= args.stop_after and epoch < args.epochs:
            say(f"stopped after epoch {epoch} (--stop-after); continue with --out {out} --resume")
            return 0
    final = diagnostics.final_metrics(args, log.history, log.best, d)
    train_cli.on_rank0(lambda: checkpoint.write_json(os.path.join(out, "final.json"), final), dist)  # after the last collective
    say(diagnostics.done_line(final, out))
    return 0


def train_epoch(args, state, d, epoch, total_steps, loss_fn, delta):
    """One pass over the training set. state: a runfolder.TrainState (nets, opts, masks, ELR memory, step, dist).

    The permutation is the same on every rank; each rank takes its 1/W of every global
    batch of B, so all ranks take the same number of steps. Crops/flips differ per rank.
    Returns the mean loss and the sample count over all ranks, and the mask changes.
    """
    dist = state.dist
    N, B = len(d.y), min(args.batch_size, len(d.y))
    g = torch.Generator().manual_seed(args.seed * 100003 + epoch)
    perm = torch.randperm(N, generator=g).to(d.x.device)
    aug_gen = torch.Generator(device=d.x.device).manual_seed(args.seed * 100003 + epoch + 1000003 * dist.rank)
    tot_loss, n_seen, changes = 0.0, 0, []
    for i in range(0, N - B + 1, B):  # drop the last partial batch: BN and batch std need B >= 2
        idx = perm[i:i + B].tensor_split(dist.world)[dist.rank]
        xb = d.x[idx]
        if d.aug == "crop-flip":  # on raw pixels, so padding is black as in torchvision's RandomCrop
            xb = data.augment_batch(xb.float(), aug_gen)
        elif d.aug == "rrc-flip":
            xb = realworld.random_resized_crop_flip(xb.float(), aug_gen)
        xb = data.to_float(xb, d.mean, d.std)
        lr = lr_at(args, state.step, total_steps)
        for opt in state.opts:
            for group in opt.param_groups:
                group["lr"] = lr
        loss_val, ch = train_step(args, state, xb, d.y_noisy[idx], d.ids[idx], loss_fn, delta, epoch)
        if not math.isfinite(loss_val):
            raise NonFiniteLoss(f"non-finite training loss ({loss_val}) at epoch {epoch}, step {state.step}; "
                                f"lower --lr or use --grad-clip; the last good checkpoint is kept")
        tot_loss, n_seen = tot_loss + loss_val * len(idx), n_seen + len(idx)
        changes += ch
        state.step += 1
        if state.stop is not None and train_cli.stop_requested(state):
            raise train_cli.Stopped()
    if dist.world > 1:
        tot, n = distributed.all_sum((torch.tensor([tot_loss, n_seen], dtype=torch.float64),), dist)[0]
        tot_loss, n_seen = float(tot), int(n)
    return tot_loss / max(n_seen, 1), changes, n_seen


def train_step(args, state, xb, yb, ids, loss_fn, delta, epoch):
    """One optimizer step for every network of the method; ids: the batch's rows of the ELR
    memory. Returns (loss, mask changes)."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (args.amp and xb.is_cuda) else torch.autocast("cpu", enabled=False)
    dist = state.dist
    with ctx:   # each DCM head scores this batch, masks itself and returns the logits (layers.DCMModule)
        outs = [net(xb) for net in state.nets]
    if args.method == "coteaching":  # each rank selects small-loss samples within its shard, as per-GPU co-teaching
        loss_a, loss_b = loss_fn(outs[0], yb), loss_fn(outs[1], yb)
        tau = args.forget_rate if args.forget_rate is not None else args.noise_rate
        keep_a, keep_b = losses.coteaching_select(loss_a.detach(), loss_b.detach(), losses.forget_rate(epoch, tau))
        per_net = [loss_a[keep_a].mean(), loss_b[keep_b].mean()]
    elif args.method == "elr":
        elr_losses, new_t = losses.elr_loss(outs[0], yb, state.elr_t[ids], **state.elr_hp)
        sizes = [len(ids)] * dist.world  # every rank's new rows, so the memory stays the same everywhere
        state.elr_t[distributed.all_gather_rows(ids, sizes, dist)] = distributed.all_gather_rows(new_t, sizes, dist)
        per_net = [elr_losses.mean()]
    else:
        per_net = [loss_fn(outs[0], yb).mean()]
    heads = [net.head for net in state.nets if isinstance(net.head, layers.DCMModule)]
    before = [h.updates for h in heads]
    for net, opt, loss in zip(state.nets, state.opts, per_net):
        if delta:
            loss = loss + delta * losses.l1_penalty(net.parameters())
        optimizer_step(args, net, opt, loss, dist)
    changes = [h.dcm_change.clone() for h, n in zip(heads, before) if h.updates != n]
    return per_net[0].item(), changes


# ----------------------------------------------------------------------------- Helpers

def optimizer_step(args, net, opt, loss, dist=distributed.Dist()):
    """Backward, average gradients over ranks, clip, step (the DCM heads' attach hooks then restore
    --dcm-freeze's masked entries and end the DCM step). Clipping after the average clips the global gradient."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_grads(net.parameters(), dist)
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
    opt.step()


def lr_at(args, step, total):
    """Learning rate at optimizer step `step` of `total` (cosine / step / none)."""
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if args.schedule == "step":
        return args.lr * (0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total)))
    return args.lr


def make_optimizer(args, net):
    wd = losses.weight_decay(args.loss, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=wd)
    return torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=wd)


def build_net(args, in_shape, num_classes, pretrained=None):
    backbone = nets.make_backbone(args.backbone, in_shape)
    if pretrained is not None:
        try:
            nets.load_pretrained(backbone, pretrained)
        except ValueError as e:
            raise UserError(str(e)) from None
    dcm = dict(keep=args.keep, scope=args.dcm_scope, interval=args.dcm_interval, warmup=args.dcm_warmup,
               stats=args.dcm_stats, eval_mask=args.dcm_eval)
    return nets.Net(backbone, nets.make_head(args.head, backbone.feature_dim, num_classes, args.kan_grid,
                                             args.kan_order, **(dcm if args.head in nets.DCM_HEADS else {})))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:  # a preset's flags go first, so the flags typed after them win
        argv, preset = presets.expand(argv)
    except presets.PresetError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(presets.describe())
        return 0
    if args.preset != preset:
        print(f"train.py: error: write --preset in full (got an abbreviation for {args.preset!r})", file=sys.stderr)
        return 2
    if 0 < args.threads <= train_cli.THREADS_MAX:   # out of range: check_args says so in one line
        torch.set_num_threads(args.threads)
    try:
        dist = distributed.dist_from_env(os.environ)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    if dist.world > 1:
        distributed.init_distributed(dist)
    who = f" (rank {dist.rank})" if dist.rank > 0 else ""
    try:
        return run(args, argv, dist)
    except PeerFailed:
        return 2  # the failing rank has printed why
    except distributed.PeerLost as e:  # a collective failed: another rank stopped (and printed why)
        print(f"train.py: error{who}: {e}", file=sys.stderr)
        return 2
    except (UserError, data.DataError, checkpoint.CheckpointError, NonFiniteLoss) as e:
        print(f"train.py: error{who}: {e}", file=sys.stderr)  # DataError: an image unreadable at a redraw
        return 3 if isinstance(e, NonFiniteLoss) else 2  # NonFiniteLoss: one rank's; the others stop at their next collective (PeerLost)
    except OSError as e:  # writing the run's files: a full disk, a folder removed under the run
        print(f"train.py: error{who}: cannot write {e.filename or 'a run file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"train.py: interrupted{who}; the last finished epoch's checkpoint (if any) is kept", file=sys.stderr)
        return 130
    finally:
        if dist.world > 1:
            distributed.close()


if __name__ == "__main__":
    sys.exit(main())

