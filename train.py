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
    python train.py --preset cifar10-ce --download    # fetch CIFAR-10 into data/cifar10 (verified), then train
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

Read top to bottom: flags (train_cli.build_parser) -> data (load_data) -> model (build_net,
init_state) -> the loop (train -> train_epoch -> train_step -> net(x): the head's DCM step, layers.py).
The harness (run folder, lock, checkpoints, stop signals, exit codes) is runfolder.Session and train_cli.
"""
import os
import signal
import sys

if __name__ == "__main__":   # Ctrl-C / SIGTERM while torch imports (seconds): one line and 130 / 143
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, lambda n, _: (os.write(2, b"train.py: interrupted while starting; nothing was written\n"),
                                          os._exit(128 + n)))

import argparse
import math
import time

import torch

import data
import diagnostics
import distributed
import layers
import losses
import nets
import realworld
import runfolder
import train_cli
from train_cli import NonFiniteLoss, UserError, build_parser  # noqa: F401  (build_parser: the flags, python train.py --help)

if __name__ == "__main__":   # imported: Ctrl-C is a KeyboardInterrupt again (train_cli.ExitCode says it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ----------------------------------------------------------------------------- Data

def load_data(args, device, loss_overrides):
    """data.prepare_training_data (noisy labels, noise.py) and the loss -> (data.TrainData, loss config,
    loss fn: logits (B, C), labels (B,) -> (B,))."""
    try:
        d = data.prepare_training_data(data.DataConfig.from_config(vars(args)), device)
        loss_config = losses.loss_config(args.loss, d.C, args.dataset, noise=args.noise, **loss_overrides)
        loss_fn = losses.make_loss(args.loss, d.C, args.dataset, noise=args.noise, **loss_overrides)
    except (data.DataError, ValueError) as e:  # ValueError: noise/loss validation (rates, maps, names)
        raise UserError(str(e)) from None
    return d, loss_config, loss_fn


# ----------------------------------------------------------------------------- Model

NET_SEED_STRIDE = 1_000_003   # co-teaching's second network seeds its random-score head with --seed + this


def build_net(args, in_shape, num_classes, pretrained=None, index=0):
    """nets.Net: the --backbone and the --head (a DCM head masks itself in its training forward, Fig. 2).
    index: which of the method's networks (co-teaching: 0, 1); --dcm-score random draws its own subsets."""
    backbone = nets.make_backbone(args.backbone, in_shape)
    if pretrained is not None:
        try:
            nets.load_pretrained(backbone, pretrained)
        except ValueError as e:
            raise UserError(str(e)) from None
    dcm = dict(keep=args.keep, scope=args.dcm_scope, interval=args.dcm_interval, warmup=args.dcm_warmup,
               stats=args.dcm_stats, eval_mask=args.dcm_eval, score=args.dcm_score,
               seed=args.seed + NET_SEED_STRIDE * index)
    return nets.Net(backbone, nets.make_head(args.head, backbone.feature_dim, num_classes, args.kan_grid,
                                             args.kan_order, **dcm), args.head_dropout)


def make_optimizer(args, net):
    """SGD or Adam; weight decay 0 for the anl_* losses (losses.weight_decay)."""
    wd = losses.weight_decay(args.loss, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=wd)
    return torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=wd)


def init_state(args, d, device, resumed, dist=distributed.Dist()):
    """-> runfolder.TrainState: networks (their heads run the DCM step), optimizers (DCM heads attached:
    the schedule advances at each step), ELR memory; from the checkpoint `resumed` when resuming.
    The seed is the same on every rank, so every rank builds the same networks."""
    torch.manual_seed(args.seed)
    n_nets = 2 if args.method == "coteaching" else 1
    pretrained = args.pretrained if resumed is None else None  # a resumed run's weights are in its checkpoint
    networks = [build_net(args, d.in_shape, d.C, pretrained, i).to(device) for i in range(n_nets)]
    opts = [make_optimizer(args, net) for net in networks]
    for net, opt in zip(networks, opts):
        heads = layers.dcm_modules(net)
        for m in heads:
            m.all_reduce = lambda mm: distributed.all_sum(mm, dist)   # global-batch moments; a lost peer is one line
        if heads:
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


# ----------------------------------------------------------------------------- The loop

def train(args, argv, dist=distributed.Dist()):
    """One run on every rank: checked flags, its folder, data, networks, then the epochs from the
    checkpoint's to --epochs. -> exit code: 0, or 130/143 when SIGINT/SIGTERM stopped it (resumable)."""
    with runfolder.Session(dist) as run:   # stop signals caught; the folder's lock released at the end
        with train_cli.agreed(dist):       # a UserError on any rank stops every rank; the lowest failing one says why
            typed = train_cli.explicit_flags(build_parser(), argv)
            device, loss_hp = train_cli.check_flags(args, typed, dist)   # before the folder and the data
            args = argparse.Namespace(**run.open(vars(args), typed, train_cli.defaults(), device))  # a resume's saved flags
            d, loss_config, loss_fn = load_data(args, device, loss_hp)
            train_cli.check_data_sizes(args, d, dist)
            probe = diagnostics.grad_probe(d, args.seed, args.track_grad_error, args.dataset)  # Fig. 3, or None
            state = init_state(args, d, device, run.resumed, dist)
        if not run.begin(state, d, loss_config, device):   # config.json, ...; False: --auto-resume found it finished
            return 0
        N, B = len(d.y), min(args.batch_size, len(d.y))
        total = args.epochs * ((N - B) // B + 1)  # optimizer steps of the whole run (the LR schedule's length)
        delta = losses.l1_weight(args.loss, loss_config)
        for epoch in range(run.first_epoch, args.epochs + 1):
            if d.pool is not None and d.subset_epoch != epoch:   # --samples-per-epoch: this epoch's images
                secs = data.redraw_subset(d, epoch)
                run.say(f"epoch {epoch:3d}: new class-balanced subset of {len(d.y)} images decoded in {secs:.1f}s", flush=True)
            t0 = time.time()
            try:
                train_loss, changes, n_seen = train_epoch(args, state, d, epoch, total, loss_fn, delta)
            except (KeyboardInterrupt, train_cli.Stopped):
                return run.stopped(epoch - 1)
            except NonFiniteLoss:
                run.nonfinite(epoch - 1)   # its --resume may then lower --lr or clip
                raise
            speed = n_seen / max(time.time() - t0, 1e-9)
            for net in state.nets:
                distributed.average_bn_stats(net, dist)  # before eval, the probe and the checkpoint: one set of BN stats
            row = dict(epoch=epoch, lr=lr_at(args, state.step - 1, total), train_loss=train_loss,
                       **diagnostics.evaluate(state, d, diagnostics.train_eval_due(epoch, args.epochs, args.train_eval_every)),
                       **diagnostics.mask_metrics(state.nets[0].head, changes),
                       **diagnostics.grad_error_metrics(state, d, probe, loss_fn, args.loss))
            code = run.end_epoch(row, t0, speed)   # checkpoint, metrics.jsonl, the epoch's line; a stop
            if code is not None:
                return code
        return run.finish(d)                       # final.json and the last line


READ_LOSSES_EVERY = 50   # training steps between reads of their losses (read_losses: one host sync on a GPU)


def train_epoch(args, state, d, epoch, total_steps, loss_fn, delta):
    """One pass over the training set. state: a runfolder.TrainState (nets, opts, ELR memory, step, dist).

    The permutation is the same on every rank; each rank takes its 1/W of every global
    batch of B, so all ranks take the same number of steps. Crops/flips differ per rank.
    Returns the mean loss and the sample count over all ranks, and the mask changes.
    """
    dist = state.dist
    N, B = len(d.y), min(args.batch_size, len(d.y))
    g = torch.Generator().manual_seed(args.seed * 100003 + epoch)
    perm = torch.randperm(N, generator=g).to(d.x.device)
    aug_gen = torch.Generator(device=d.x.device).manual_seed(args.seed * 100003 + epoch + 1000003 * dist.rank)
    tot_loss, n_seen, changes, unread = 0.0, 0, [], []   # unread: (loss tensor, samples, step) of steps not yet read
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
        loss, ch = train_step(args, state, xb, d.y_noisy[idx], d.ids[idx], loss_fn, delta, epoch)
        unread.append((loss, len(idx), state.step))
        changes += ch
        state.step += 1
        due = len(unread) == READ_LOSSES_EVERY   # the loop's host syncs: every READ_LOSSES_EVERY steps
        if due:
            tot_loss, n_seen = read_losses(unread, tot_loss, n_seen, epoch)
        # A signal on any rank: all stop here. One process: a host flag, checked every step; several
        # ranks: an all-reduce (a host sync), so only with the loss reads (and after each epoch)
        if state.stop is not None and (due or dist.world == 1) and train_cli.stop_requested(state):
            read_losses(unread, tot_loss, n_seen, epoch)   # a non-finite loss before it still stops the run as such
            raise train_cli.Stopped()
    tot_loss, n_seen = read_losses(unread, tot_loss, n_seen, epoch)
    if dist.world > 1:
        tot, n = distributed.all_sum((torch.tensor([tot_loss, n_seen], dtype=torch.float64),), dist)[0]
        tot_loss, n_seen = float(tot), int(n)
    return tot_loss / max(n_seen, 1), changes, n_seen


def read_losses(pending, tot_loss, n_seen, epoch):
    """Read the steps' losses in one go (one host sync on a GPU) and add them to the epoch's sums, in
    step order as Python floats. pending: [(0-dim loss tensor, samples, step)], emptied.
    -> (tot_loss, n_seen). A non-finite loss raises NonFiniteLoss naming its step: the run stops
    before the epoch's checkpoint, so the last good one is kept."""
    values = torch.stack([loss for loss, _, _ in pending]).tolist() if pending else []
    for value, (_, size, step) in zip(values, pending):
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite training loss ({value}) at epoch {epoch}, step {step}; "
                                f"the last good checkpoint is kept: continue it with --resume and a lower --lr "
                                f"(or --grad-clip), recorded in config.json")
        tot_loss, n_seen = tot_loss + value * size, n_seen + size
    pending.clear()
    return tot_loss, n_seen


def train_step(args, state, xb, yb, ids, loss_fn, delta, epoch):
    """One optimizer step for every network of the method on this rank's shard xb (b, ...), yb (b,);
    ids: the batch's rows of the ELR memory. -> (loss of the first network, mask changes: 0-dim tensors,
    none of them read: the step makes no host sync, read_losses reads the losses every READ_LOSSES_EVERY steps)."""
    dist = state.dist
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (args.amp and xb.is_cuda) else torch.autocast("cpu", enabled=False)
    with ctx:   # each DCM head scores this batch, masks itself and returns the logits (Fig. 2; layers.DCMModule)
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
        if delta:   # the ANL losses' L1 term (it replaces weight decay)
            loss = loss + delta * losses.l1_penalty(net.parameters())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_grads(net.parameters(), dist)  # before clipping: the global batch's gradient is clipped
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        opt.step()   # the DCM head's attach hook then restores --dcm-freeze's masked entries and ends its step
    changes = [h.dcm_change.clone() for h, n in zip(heads, before) if h.updates != n]
    return per_net[0].detach(), changes


def lr_at(args, step, total):
    """Learning rate at optimizer step `step` of `total` (cosine / step / none)."""
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if args.schedule == "step":
        return args.lr * (0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total)))
    return args.lr


def main(argv=None):
    """python train.py FLAGS -> exit code: 0 (finished, or --stop-after), 2 a bad flag, file or peer,
    3 a non-finite loss, 130/143 stopped by SIGINT/SIGTERM (resumable)."""
    parsed = train_cli.parse(sys.argv[1:] if argv is None else argv)   # presets expanded; torchrun joined
    if isinstance(parsed, int):   # --list-presets, or an error already printed
        return parsed
    args, argv, dist = parsed
    with train_cli.ExitCode(dist) as result:   # an error -> one line on stderr and its exit code
        result.code = train(args, argv, dist)
    return result.code


if __name__ == "__main__":
    code = main()
    for _sig in (signal.SIGINT, signal.SIGTERM):   # the run is over: a late signal cannot change its files or code
        signal.signal(_sig, signal.SIG_IGN)
    sys.exit(code)
