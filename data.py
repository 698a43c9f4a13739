"""Datasets (docs/design.md §6) as uint8 tensors, stratified subsets and batch augmentation.

Not a part of the DCM method itself: the loaders that feed train.py's
experiments (the paper's benchmarks: clean data plus synthetic or human label noise).
Everything is a tensor ready to move to the training device; augmentation is
batch tensor ops (pad once, gather crops, flip by torch.where), no DataLoader.
The real-world JPEG sets (WebVision-Mini, Clothing1M) are decoded once at load
time by a thread pool (Pillow, optional) into the same uint8 tensors.

    ds = load_dataset("digits")                        # embedded default, no download
    x = to_float(ds.x_train[:128], ds.mean, ds.std)    # (128, 1, 8, 8) float32
    x = augment_batch(x, torch.Generator().manual_seed(0), pad=1, flip=False)

Every user-facing problem with the files raises DataError (a ValueError) with
one line naming what is wrong and how to fix it. Where a dataset is looked for
(`data_folders`) and what --download fetches and verifies (download.py):
docs/design.md §6.
"""
import gzip
import os
import pickle
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

import noise
import realworld
from download import SOURCES as DOWNLOAD_SOURCES, DownloadError
from download import ensure as download_dataset, ensure_file as download_file   # --download (download.py)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar10n", "cifar100n")
# Real-world noisy JPEG datasets (realworld.py): web/crowd labels, clean training labels unknown.
IMAGE_DATASETS = ("webvision-mini", "clothing1m")
ALL_DATASETS = DATASETS + IMAGE_DATASETS   # the one list of --dataset names
CIFAR_N_DEFAULT = {"cifar10n": "aggre", "cifar100n": "noisy100"}   # human-label sets, their default labels
# Datasets whose training labels are already noisy (human or web labels): no synthetic noise on top.
REAL_NOISE_DATASETS = tuple(CIFAR_N_DEFAULT) + IMAGE_DATASETS

_EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
# Without --data-dir a dataset is read from its default folder, $DCM_DATA/<name> or else
# data/<name> in the current folder (where --download puts it), then from a system copy here.
DATA_ENV = "DCM_DATA"
DEFAULT_DIRS = {
    "digits": _EMBEDDED,                                    # embedded/digits.npz, committed (the only place)
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",   # Debian: dataset-fashion-mnist
}
DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10", "cifar100", "cifar10n", "cifar100n")   # --download

# The digits train/test split is fixed, independent of a run's --seed, so that
# every run is evaluated on the same 500 test images.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 500

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": ("data_batch_1", "data_batch_2", "data_batch_3",
                           "data_batch_4", "data_batch_5", "test_batch"),
               "cifar100": ("train", "test")}
# torchvision keeps the IDX files in <root>/MNIST/raw and <root>/FashionMNIST/raw: such a root is read too.
TORCHVISION_IDX = {"mnist": os.path.join("MNIST", "raw"), "fashion-mnist": os.path.join("FashionMNIST", "raw")}
CIFAR_N_FILES = {"cifar10n": "CIFAR-10_human.pt", "cifar100n": "CIFAR-100_human.pt"}   # next to the CIFAR folder

_HOW_TO_GET = {
    "digits": "restore embedded/digits.npz from the repository (git checkout -- embedded/digits.npz)",
    "mnist": "download the four files from https://ossci-datasets.s3.amazonaws.com/mnist/ (or "
             "https://yann.lecun.com/exdb/mnist/) and pass --data-dir, or add --download",
    "fashion-mnist": "apt-get install dataset-fashion-mnist, or download the four files from "
                     "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir, or add --download",
    "cifar10": "download and untar https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
               "and pass --data-dir, or add --download",
    "cifar100": "download and untar https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
                "and pass --data-dir, or add --download",
}
_CIFAR_N_SOURCE = ("http://noisylabels.com (files CIFAR-10_human.pt, CIFAR-100_human.pt in github UCSC-REAL/cifar-10-100n), "
                   "or add --download")


class DataError(ValueError):
    """A user-facing data problem; its message is one line saying what to fix."""


class Dataset(NamedTuple):
    """One dataset in memory; N train and M test samples of C channels.

    x_train: (N, C, H, W) uint8, y_train: (N,) int64 clean labels,
    x_test: (M, C, H, W) uint8, y_test: (M,) int64, num_classes: int,
    mean, std: per-channel tuples of floats for x/255 (training set statistics),
    noisy_train: (N,) int64 human (CIFAR-N) or web/crowd (IMAGE_DATASETS) labels or None,
    coarse_train: (N,) int64 CIFAR-100 superclass labels or None,
    fine_to_coarse: (100,) int64 superclass of each fine class (-1 if the class
    is absent from the training set) or None,
    clean_train_known: False when y_train are the noisy labels themselves (the
    clean training labels of WebVision and Clothing1M are unknown),
    x_val: (V, C, H, W) uint8, y_val: (V,) int64: a second clean set or None
    (Clothing1M's clean val keys, ILSVRC12 val for WebVision-Mini),
    train_pool: (paths, labels (P,) int64 numpy) of the whole noisy training list
    when x_train is a subset of it (--samples-per-epoch), else None;
    train_ids: (N,) int64 rows of train_pool that x_train holds, or None.
    """
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    noisy_train: Optional[torch.Tensor] = None
    coarse_train: Optional[torch.Tensor] = None
    fine_to_coarse: Optional[torch.Tensor] = None
    clean_train_known: bool = True
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    train_pool: Optional[tuple] = None
    train_ids: Optional[torch.Tensor] = None


# ---------------------------------------------------------------- public API

def load_dataset(name, data_dir=None, noisy_labels_file=None, noisy_labels=None, download=False, mirror=None,
                 **image_opts):
    """Load dataset `name` (one of ALL_DATASETS) from `data_dir` (default: data_folders(name)).

    noisy_labels_file / noisy_labels: the CIFAR-N label file (default CIFAR_N_FILES[name]
    next to the CIFAR folder) and which labels to take (aggre|worst|rand1|rand2|rand3|clean
    for cifar10n, noisy100|clean for cifar100n; default aggre / noisy100); only for cifar10n
    and cifar100n. download: fetch what is missing and verify every file first (download.py;
    DOWNLOADABLE only), from mirror/<file name> when mirror is a base URL.
    image_opts: keyword arguments of realworld.load_image_dataset (IMAGE_DATASETS only).
    Returns a Dataset (shapes in its docstring). Raises DataError.
    """
    if download and name in IMAGE_DATASETS:
        raise DataError(f"--download cannot fetch {name}: it needs registration; to get it: {realworld.HOW_TO_GET[name]}")
    download = download and name != "digits"   # embedded: nothing to fetch
    if name in IMAGE_DATASETS:
        if noisy_labels_file is not None or noisy_labels is not None:
            raise DataError(f"--noisy-labels-file/--noisy-labels apply to cifar10n and cifar100n only, not to {name}")
        try:
            return Dataset(**realworld.load_image_dataset(name, data_dir, **image_opts))
        except ValueError as e:  # realworld.py's one-line messages about the files
            raise DataError(str(e)) from None
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown; expected one of {', '.join(ALL_DATASETS)}")
    if image_opts:
        raise DataError(f"{', '.join(sorted(image_opts))} apply to {' and '.join(IMAGE_DATASETS)} only, not to {name}")
    is_n = name in CIFAR_N_DEFAULT
    if not is_n and (noisy_labels_file is not None or noisy_labels is not None):
        raise DataError(f"--noisy-labels-file/--noisy-labels apply to cifar10n and cifar100n only, "
                        f"not to {name}")
    base = name[:-1] if is_n else name   # cifar10n reads the cifar10 images; messages name `name`
    folder = _data_folder(base, data_dir, name, download, mirror)
    if base == "digits":
        x_train, y_train, x_test, y_test = _load_digits(folder)
        extra = {}
    elif base in ("mnist", "fashion-mnist"):
        x_train, y_train, x_test, y_test = _load_idx_dataset(base, folder)
        extra = {}
    else:
        x_train, y_train, x_test, y_test, extra = _load_cifar(base, folder, name)
    if is_n:
        path = _cifar_n_file(name, noisy_labels_file, _cifar_folder(base, folder), download, mirror)
        extra["noisy_train"] = _load_cifar_n(name, path, noisy_labels, len(y_train))
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    mean, std = channel_stats(x_train)
    return Dataset(name, x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test),
                   100 if base == "cifar100" else 10, mean, std, **extra)


def default_augment(name):
    """The augmentation train.py uses by default: "crop-flip" for CIFAR, "rrc-flip"
    (random resized crop + flip) for IMAGE_DATASETS, "none" otherwise.

    Digits and (Fashion-)MNIST are centred, orientation-specific images (a flip
    changes a digit's meaning) and the usual noisy-label protocols train them
    without augmentation; CIFAR uses the standard pad-4 crop + horizontal flip;
    the ImageNet-style datasets use ImageNet's standard training transform.
    """
    if name in IMAGE_DATASETS:
        return "rrc-flip"
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown; expected one of {', '.join(ALL_DATASETS)}")
    return "crop-flip" if name.startswith("cifar") else "none"


def stratified_subset(labels, n, seed):
    """Seeded class-stratified subset: sorted indices (n,) int64 into labels (N,).

    Class c gets floor(n·N_c/N) samples plus one for the classes with the largest
    remainders (ties to the lower class index), so the total is exactly n and
    every count is within 1 of its proportional share. n >= N returns arange(N).
    """
    labels = torch.as_tensor(labels).long().cpu()
    N = labels.numel()
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if n >= N:
        return torch.arange(N)
    classes, counts = torch.unique(labels, return_counts=True)
    share, rem = (n * counts) // N, (n * counts) % N    # integer arithmetic: exact
    # Largest remainders first; the stable sort keeps ties in class order.
    order = torch.sort(-rem, stable=True).indices
    share[order[: n - int(share.sum())]] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, k in zip(classes.tolist(), share.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values


def channel_stats(x):
    """Per-channel mean and population std of x/255, x: (N, C, H, W) uint8 tensor.

    Computed exactly from a 256-bin histogram per channel: no float copy of the
    data (CIFAR's 150 M values). On the full CIFAR-10 train set this gives the
    usual (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616). The std is floored
    at 1/255 so a constant channel (tiny test sets) cannot divide by zero.
    Returns (mean, std), two tuples of C floats.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].flatten(), minlength=256).double() / x[:, c].numel()
        m = float(p @ levels)
        mean.append(m)
        std.append(max(float(p @ (levels - m) ** 2) ** 0.5, 1 / 255))
    return tuple(mean), tuple(std)


def to_float(x, mean, std):
    """Normalise images: x (B, C, H, W) in 0..255 (any dtype, any device) -> float32
    (B, C, H, W) equal to (x/255 - mean[c]) / std[c]."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def augment_batch(x, generator, pad=4, flip=True, padding_mode="zeros"):
    """Random crop after padding, then random horizontal flip: x (B, C, H, W) -> (B, C, H, W).

    The batch is padded once (zeros, or "reflect"); unfold views every H×W
    window of it as (B, C, 2·pad+1, 2·pad+1, H, W) without copying, and one
    advanced index picks each sample's window at its random offset (dy, dx).
    Each sample is then mirrored with probability 1/2 via torch.where.
    Deterministic given `generator`, which must live on x's device (CPU or CUDA).
    Zero padding of a normalised batch pads with the channel mean; to pad with
    black as torchvision's RandomCrop does, augment before to_float.
    """
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if padding_mode not in ("zeros", "reflect"):
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
    B, C, H, W = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="constant" if padding_mode == "zeros" else "reflect")
        windows = xp.unfold(2, H, 1).unfold(3, W, 1)          # (B, C, 2p+1, 2p+1, H, W), a view
        dy, dx = torch.randint(0, 2 * pad + 1, (2, B), generator=generator, device=x.device)
        x = windows[torch.arange(B, device=x.device), :, dy, dx]   # (B, C, H, W)
    if flip:
        mirror = torch.rand(B, generator=generator, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


# ---------------------------------------------------------------- the experiment's training data
# train.py's data step: noisy labels, the noise report, the validation split and the
# per-epoch subsets of the real-world sets, from plain values (a DataConfig). Errors are DataError.

class DataConfig(NamedTuple):
    """What train.py's data step needs, as plain values: train.py's flags of the same names
    (their defaults and meaning are in `python train.py --help`)."""
    dataset: str
    data_dir: Optional[str]
    download: bool             # fetch and verify the dataset's files first (download.py)
    mirror: Optional[str]      # with download: base URL serving every file under its own name
    noisy_labels_file: Optional[str]
    noisy_labels: Optional[str]
    seed: int
    limit_train: int           # seeded class-stratified subset of this size, 0 = all
    limit_test: int            # class-stratified test subset of this size (seed 0 for every run), 0 = all
    noise: str                 # none|symmetric|asymmetric|pairflip|instance|cifar100-superclass
    noise_rate: float
    noise_include_true: bool
    noise_sampling: str
    val_frac: float            # fraction of the noisy training set held out (noisy labels)
    augment: str               # auto = default_augment(dataset)
    image_size: int            # IMAGE_DATASETS: 0 = 224
    samples_per_epoch: int     # IMAGE_DATASETS: class-balanced subset size, 0 = all
    subset_once: bool          # IMAGE_DATASETS: draw that subset once, not every epoch
    decode_workers: int
    train_list: Optional[str]
    test_list: Optional[str]
    imagenet_val_dir: Optional[str]

    @classmethod
    def from_config(cls, config):
        """The DataConfig of a run's flags, a dict that holds these keys (config.json's, vars(args))."""
        return cls(**{k: config[k] for k in cls._fields})


def noisy_labels(cfg, ds, x, y):
    """Corrupt clean labels y (N,) per cfg (a DataConfig); returns (noisy (N,), transition matrix or None)."""
    C, seed = ds.num_classes, cfg.seed
    if ds.noisy_train is not None:
        return ds.noisy_train, None
    if cfg.noise == "none" or cfg.noise_rate == 0:
        return y.clone(), None
    if cfg.noise == "instance":
        return noise.instance_dependent(x, y, cfg.noise_rate, C, seed), None
    if cfg.noise == "cifar100-superclass":
        if ds.fine_to_coarse is None:
            raise DataError(f"--noise cifar100-superclass needs CIFAR-100's coarse labels; --dataset {cfg.dataset} has none")
        T = noise.superclass_transition_matrix(ds.fine_to_coarse, cfg.noise_rate)
    else:
        T = noise.transition_matrix(cfg.noise, C, cfg.noise_rate, dataset=cfg.dataset, include_true=cfg.noise_include_true)
    return noise.corrupt_labels(y, T, seed, sampling=cfg.noise_sampling), T


def _image_options(cfg):
    """load_dataset's keyword arguments for IMAGE_DATASETS ({} for the others)."""
    if cfg.dataset not in IMAGE_DATASETS:
        return {}
    opts = dict(image_size=cfg.image_size or 224, samples=cfg.samples_per_epoch, seed=cfg.seed,
                workers=cfg.decode_workers, train_list=cfg.train_list, test_list=cfg.test_list)
    if cfg.dataset == "webvision-mini":
        opts["imagenet_val_dir"] = cfg.imagenet_val_dir
    if not cfg.subset_once and (cfg.val_frac > 0 or cfg.limit_train):
        opts["redraw_refused"] = REDRAW_REFUSED
    return opts


REDRAW_REFUSED = ("--val-frac/--limit-train cannot be combined with a new --samples-per-epoch subset every epoch "
                  "(a held-out image would be drawn for training later); add --subset-once, or drop them")


def _noise_report(cfg, ds, y, y_noisy, T):
    """The noise report saved with every run (noise.noise_report plus what produced the labels)."""
    if not ds.clean_train_known:  # web/crowd labels only (WebVision, Clothing1M): the realised noise cannot be measured
        return dict(rate=None, per_class=None, T=None, seed=cfg.seed, kind=f"real-world:{cfg.dataset}",
                    clean_labels="unknown", nominal_rate=None, T_nominal=None)
    report = noise.noise_report(y, y_noisy, ds.num_classes)
    report.update(seed=cfg.seed, kind=cfg.noise if ds.noisy_train is None else f"human:{cfg.noisy_labels or 'default'}",
                  nominal_rate=cfg.noise_rate, T_nominal=None if T is None else np.asarray(T).tolist())
    return report


@dataclass
class TrainData:
    """A run's data on the training device (prepare_training_data): N training rows (this
    epoch's subset when redraw_subset replaces them), M test rows, C classes."""
    x: torch.Tensor                # (N, ...) uint8 training images
    y: torch.Tensor                # (N,) clean labels (the noisy ones when clean_known is False)
    y_noisy: torch.Tensor          # (N,) the labels trained on
    x_test: torch.Tensor           # (M, ...) uint8
    y_test: torch.Tensor           # (M,)
    C: int                         # number of classes
    mean: tuple                    # per-channel, for to_float
    std: tuple
    aug: str                       # none | crop-flip | rrc-flip
    val: Optional[tuple]           # --val-frac: (x, y_noisy) held out, else None
    report: dict                   # the noise report (noise_report.json)
    in_shape: tuple                # (channels, H, W) of one image
    clean_known: bool              # whether y are the true labels (not for webvision-mini/clothing1m)
    clean_val: Optional[tuple]     # (x, y, metric name) of a second clean test set, else None
    pool: Optional[tuple]          # the image pool subsets are redrawn from each epoch, else None
    subset_epoch: int              # the epoch whose subset x holds
    config: DataConfig
    ids: torch.Tensor              # (N,) each row's id in the ELR memory (its pool row when subsets are redrawn)
    n_ids: int                     # rows of the ELR memory


def prepare_training_data(cfg, device):
    """Load, subset, corrupt and split per cfg (a DataConfig) -> TrainData, tensors on `device`."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.noisy_labels_file, cfg.noisy_labels, cfg.download, cfg.mirror,
                      **_image_options(cfg))
    x, y = ds.x_train, ds.y_train
    if cfg.limit_train and cfg.limit_train < len(y):
        idx = stratified_subset(y, cfg.limit_train, cfg.seed)
        x, y = x[idx], y[idx]
        if ds.noisy_train is not None:
            ds = ds._replace(noisy_train=ds.noisy_train[idx])
    y_noisy, T = noisy_labels(cfg, ds, x, y)
    y_noisy = torch.as_tensor(y_noisy, dtype=torch.long)
    report = _noise_report(cfg, ds, y, y_noisy, T)
    val = None
    if cfg.val_frac > 0:
        n_val = max(1, int(round(cfg.val_frac * len(y))))
        vidx = stratified_subset(y_noisy, n_val, cfg.seed + 1)
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[vidx] = False
        val = (x[vidx].to(device), y_noisy[vidx].to(device))
        x, y, y_noisy = x[keep], y[keep], y_noisy[keep]
    pool = None if cfg.subset_once else ds.train_pool
    if pool is not None and (cfg.val_frac > 0 or cfg.limit_train):   # load_dataset refuses it before decoding
        raise DataError(REDRAW_REFUSED)
    aug = default_augment(cfg.dataset) if cfg.augment == "auto" else cfg.augment
    x_test, y_test = ds.x_test, ds.y_test
    if cfg.limit_test and cfg.limit_test < len(y_test):  # the same subset for every run (seed 0), so runs compare
        tidx = stratified_subset(y_test, cfg.limit_test, 0)
        x_test, y_test = x_test[tidx], y_test[tidx]
    # The second clean set: Clothing1M's clean val keys, or ILSVRC12 val for WebVision.
    metric = "val_acc_clean" if cfg.dataset == "clothing1m" else "imagenet_acc"
    clean_val = None if ds.x_val is None else (ds.x_val.to(device), ds.y_val.to(device), metric)
    return TrainData(x=x.to(device), y=y.to(device), y_noisy=y_noisy.to(device), x_test=x_test.to(device),
                     y_test=y_test.to(device), C=ds.num_classes, mean=ds.mean, std=ds.std, aug=aug,
                     val=val, report=report, in_shape=tuple(ds.x_train.shape[1:]),
                     clean_known=ds.clean_train_known, clean_val=clean_val, pool=pool, subset_epoch=1, config=cfg,
                     ids=(ds.train_ids if pool is not None else torch.arange(len(y))).to(device),
                     n_ids=len(y) if pool is None else len(pool[1]))


def redraw_subset(d, epoch):
    """--samples-per-epoch: replace the training rows of d (a TrainData) by epoch's class-balanced
    subset, in place. Seeded by (seed, epoch), so every rank and a resumed run draw the same images. -> seconds."""
    cfg = d.config
    t0 = time.time()
    try:
        x, y, ids = realworld.draw_train_subset(d.pool, cfg.samples_per_epoch, cfg.seed, epoch,
                                                cfg.image_size or 224, cfg.decode_workers)
    except ValueError as e:  # an image unreadable now
        raise DataError(str(e)) from None
    dev = d.x.device
    d.x, d.y, d.y_noisy, d.ids, d.subset_epoch = x.to(dev), y.to(dev), y.to(dev), ids.to(dev), epoch
    return time.time() - t0


# ---------------------------------------------------------------- folders

def default_folder(name):
    """The folder --download fills for `name` without --data-dir: $DCM_DATA/<name> when that
    variable is set (a shared cache), else data/<name> in the current folder."""
    return os.path.join(os.environ.get(DATA_ENV) or "data", name)


def data_folders(name):
    """Where `name` is looked for without --data-dir, in order: its default folder, then the
    system copy of DEFAULT_DIRS (Debian's Fashion-MNIST); digits: embedded/ only."""
    if name == "digits":
        return [DEFAULT_DIRS[name]]
    return [default_folder(name)] + ([DEFAULT_DIRS[name]] if name in DEFAULT_DIRS else [])


def _data_folder(name, data_dir, asked=None, download=False, mirror=None):
    """The existing, non-empty folder to read `name` from: data_dir, else the first of
    data_folders(name) that holds its files; with download, the files are fetched and verified
    there first (download.ensure). DataError otherwise, starting with `asked` (the --dataset
    given, e.g. cifar10n for the cifar10 images; default name)."""
    asked = asked or name
    where = data_dir
    if where is None:
        places = data_folders(name)
        where = next((p for p in places if _holds(name, p)), None)
        if where is None and (download or name == "digits"):
            where = places[0]
        if where is None:   # a partial default folder: the loader names the file it lacks
            where = next((p for p in places if os.path.isdir(p) and os.listdir(p)), None)
        if where is None:
            raise DataError(f"{asked} needs --data-dir DIR with {_expected(name)} (or them in "
                            f"{' or '.join(places)}); to get them: {_HOW_TO_GET[name]}")
    if download:
        try:
            download_dataset(name, _download_root(name, where), mirror)
        except DownloadError as e:
            raise DataError(f"{asked}: {e}") from None
    if not os.path.isdir(where):
        raise DataError(f"{asked}: data directory {where} does not exist (or is not a folder); expected "
                        f"{_expected(name)} there; to get them: {_HOW_TO_GET[name]}")
    if not os.listdir(where):
        raise DataError(f"{asked}: data directory {where} is empty; expected "
                        f"{_expected(name)} there; to get them: {_HOW_TO_GET[name]}")
    return where


def _holds(name, folder):
    """Whether folder (or the subfolder the loaders also accept) has every file `name` needs."""
    if name == "digits":
        return os.path.isfile(os.path.join(folder, "digits.npz"))
    if name in CIFAR_FOLDERS:
        inner = _cifar_folder(name, folder)
        return all(os.path.isfile(os.path.join(inner, f)) for f in CIFAR_FILES[name])
    inner = _idx_folder(name, folder)
    return all(os.path.isfile(os.path.join(inner, s + ".gz")) or os.path.isfile(os.path.join(inner, s))
               for s in IDX_FILES)


def _download_root(name, folder):
    """The folder download.ensure fills (or finds complete): folder, or the parent of a CIFAR
    folder given itself, or the torchvision subfolder that holds the IDX files."""
    if name in CIFAR_FOLDERS:
        itself = os.path.basename(os.path.normpath(folder)) == CIFAR_FOLDERS[name]
        return os.path.dirname(os.path.abspath(folder)) if itself else folder
    return _idx_folder(name, folder)


def _expected(name):
    """Human-readable list of the files `name` needs."""
    if name == "digits":
        return "digits.npz"
    if name in CIFAR_FOLDERS:
        return f"the folder {CIFAR_FOLDERS[name]} ({', '.join(CIFAR_FILES[name])})"
    return ", ".join(f + ".gz" for f in IDX_FILES) + " (or uncompressed)"


def _find_file(folder, name, candidates, asked=None):
    """The first existing path among folder/candidates; DataError naming `name`'s files
    (the message starts with `asked`, the --dataset given; default name)."""
    for c in candidates:
        path = os.path.join(folder, c)
        if os.path.isfile(path):
            return path
    raise DataError(f"{asked or name}: {candidates[0]} is missing in {folder}; expected "
                    f"{_expected(name)}; to get them: {_HOW_TO_GET[name]}")


# ---------------------------------------------------------------- digits

def _load_digits(folder):
    """digits.npz -> x_train (1297, 1, 8, 8), y_train, x_test (500, 1, 8, 8), y_test.

    The file holds images (1797, 8, 8) uint8 in 0..16 and labels (1797,) uint8
    (see embedded/README.md); values are rescaled to 0..255 by round(v·255/16).
    """
    path = _find_file(folder, "digits", ["digits.npz"])
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"digits: {path} is unreadable ({_one_line(e)}); {_HOW_TO_GET['digits']}") from None
    if (images.ndim != 3 or images.shape[1:] != (8, 8) or labels.shape != images.shape[:1]
            or not np.isfinite(images).all() or images.min(initial=0) < 0     # NaN passed the max check
            or images.max(initial=0) > 16 or labels.max(initial=0) > 9):
        raise DataError(f"digits: {path} does not hold images (N, 8, 8) in 0..16 and labels (N,) "
                        f"in 0..9; {_HOW_TO_GET['digits']}")
    x = np.round(images.astype(np.float64) * 255 / 16).astype(np.uint8)[:, None]
    y = labels.astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    test[stratified_subset(torch.from_numpy(y), DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED).numpy()] = True
    return x[~test], y[~test], x[test], y[test]


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def parse_idx(raw, path, ndim):
    """Parse the bytes of an IDX file of uint8 values with `ndim` dimensions -> numpy array.

    Header: 2 zero bytes, type byte 0x08 (uint8), the number of dimensions, then
    each dimension as a big-endian uint32 (magic 0x00000803 for images (N, H, W),
    0x00000801 for labels (N,)). DataError if the magic or the length is wrong.
    """
    magic = 0x800 + ndim
    head = 4 + 4 * ndim
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"{path} is not an IDX file of {ndim}-d uint8 data (magic {found}, "
                        f"expected {magic:08x}); re-download it")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) != head + int(np.prod(dims)):
        raise DataError(f"{path} has {len(raw) - head} data bytes, its header {dims} says "
                        f"{int(np.prod(dims))}: truncated or corrupt, re-download it")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims).copy()


def _idx_folder(name, folder):
    """folder, or its torchvision subfolder (MNIST/raw, FashionMNIST/raw) when only that holds the files."""
    sub = os.path.join(folder, TORCHVISION_IDX[name])
    has = lambda f: any(os.path.isfile(os.path.join(f, s + ".gz")) for s in IDX_FILES)
    return sub if not has(folder) and has(sub) else folder


def _read_idx(folder, name, stem, ndim):
    """Read folder/stem.gz (or the uncompressed folder/stem) as an IDX array."""
    path = _find_file(folder, name, [stem + ".gz", stem])
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({_one_line(e)}); re-download it") from None
    return parse_idx(raw, path, ndim)


def _load_idx_dataset(name, folder):
    """The four IDX files -> x_train (N, 1, H, W) uint8, y_train (N,) int64, x_test, y_test."""
    folder = _idx_folder(name, folder)
    xtr, ytr, xte, yte = (_read_idx(folder, name, stem, 3 if "images" in stem else 1)
                          for stem in IDX_FILES)
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if len(x) != len(y) or y.max(initial=0) > 9:
            raise DataError(f"{name}: {split} files disagree ({len(x)} images, {len(y)} labels, "
                            f"labels up to {y.max(initial=0)}, expected 0..9) in {folder}; re-download them")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{name}: train images are {xtr.shape[1:]} but t10k images {xte.shape[1:]} "
                        f"in {folder}; re-download them")
    return xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64)


# ---------------------------------------------------------------- CIFAR pickles

class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR batches that resolves only numpy's array globals.

    pickle.load calls whatever callable a file names (os.system included), so a
    tampered download could run code. The CIFAR batches need just dicts, lists,
    bytes and ints (opcodes, no globals) plus numpy's ndarray reconstruction;
    find_class returns those and refuses every other global.
    """

    def find_class(self, module, name):
        # Python-2 era files say numpy.core.multiarray, numpy >= 2 writes numpy._core;
        # the function is taken from ndarray's own reduction, so no private import.
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.empty(0).__reduce__()[0]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _read_cifar_batch(path, label_keys):
    """One CIFAR pickle -> (x (N, 3, 32, 32) uint8, [labels (N,) int64 per key])."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        x, labels = d[b"data"], [np.asarray(d[k], dtype=np.int64) for k in label_keys]
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, OverflowError) as e:
        raise DataError(f"{path} is truncated, corrupt or not a CIFAR batch ({_one_line(e)}); "
                        f"re-download it") from None
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072
            or any(y.shape != (len(x),) for y in labels)):
        raise DataError(f"{path} is not a CIFAR batch (expected data (N, 3072) uint8 and N labels "
                        f"per key {', '.join(k.decode() for k in label_keys)}); re-download it")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
    return x.reshape(-1, 3, 32, 32), labels


def _cifar_folder(name, folder):
    """Accept either the CIFAR folder itself or its parent."""
    inner = os.path.join(folder, CIFAR_FOLDERS[name])
    return inner if os.path.isdir(inner) else folder


def _load_cifar(name, folder, asked=None):
    """CIFAR-10/100 pickles -> x_train (N, 3, 32, 32), y_train, x_test, y_test, extra fields.
    asked: the --dataset given (cifar10n/cifar100n read these images), named by the messages."""
    asked = asked or name
    folder = _cifar_folder(name, folder)
    keys = [b"labels"] if name == "cifar10" else [b"fine_labels", b"coarse_labels"]
    parts = [_read_cifar_batch(_find_file(folder, name, [f], asked), keys) for f in CIFAR_FILES[name]]
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    train_labels = [np.concatenate([p[1][i] for p in parts[:-1]]) for i in range(len(keys))]
    x_test, test_labels = parts[-1]
    num_classes = 10 if name == "cifar10" else 100
    for y in (train_labels[0], test_labels[0]):
        if y.min(initial=0) < 0 or y.max(initial=0) >= num_classes:
            raise DataError(f"{asked}: labels outside 0..{num_classes - 1} in {folder}; re-download it")
    extra = {}
    if name == "cifar100":
        extra["coarse_train"] = torch.from_numpy(train_labels[1])
        extra["fine_to_coarse"] = _fine_to_coarse(train_labels[0], train_labels[1], folder, asked)
    return x_train, train_labels[0], x_test, test_labels[0], extra


def _fine_to_coarse(fine, coarse, folder, asked="cifar100"):
    """(100,) int64 superclass of each fine class, -1 where the class is absent."""
    table = np.full(100, -1, dtype=np.int64)
    table[fine] = coarse
    if (table[fine] != coarse).any() or coarse.min(initial=0) < 0 or coarse.max(initial=0) >= 20:
        raise DataError(f"{asked}: coarse labels in {folder} are not one superclass in 0..19 "
                        f"per fine class; re-download it")
    return torch.from_numpy(table)


# ---------------------------------------------------------------- CIFAR-N

def _cifar_n_file(name, path, cifar_folder, download, mirror):
    """The CIFAR-N label file to read: `path` (--noisy-labels-file), else CIFAR_N_FILES[name] next
    to cifar_folder (the CIFAR images' folder) when it is there or download asks for it; fetched
    and verified first with download. -> path, or None."""
    default = os.path.join(os.path.dirname(cifar_folder) or ".", CIFAR_N_FILES[name])
    if path is None and (download or os.path.isfile(default)):
        path = default
    if download:
        try:
            download_file(DOWNLOAD_SOURCES[name][0], os.fspath(path), mirror)
        except DownloadError as e:
            raise DataError(f"{name}: {e}") from None
    return path


def _load_cifar_n(name, path, which, n_train):
    """Human labels (n_train,) int64 from the CIFAR-N file via noise.load_cifar_n."""
    if path is None:
        raise DataError(f"{name} needs --noisy-labels-file ({CIFAR_N_FILES[name]}, or that file next to the "
                        f"CIFAR folder); get it from {_CIFAR_N_SOURCE}")
    if not os.path.isfile(path):
        raise DataError(f"{name}: --noisy-labels-file {path} does not exist; get it from {_CIFAR_N_SOURCE}")
    which = CIFAR_N_DEFAULT[name] if which is None else which
    try:
        labels = noise.load_cifar_n(path, which, 10 if name == "cifar10n" else 100)
    except ValueError as e:  # noise.py's one-line messages about the file or `which`
        raise DataError(f"{name}: {_one_line(e)}") from None
    # CIFAR-N labels follow the 50 000 training images in file order: a partial
    # CIFAR folder cannot be matched to them.
    if len(labels) != n_train:
        raise DataError(f"{name}: {path} has {len(labels)} labels but the CIFAR folder "
                        f"{n_train} training images; use the complete CIFAR training set")
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _one_line(e):
    """An exception's message squeezed onto one line."""
    return " ".join(str(e).split()) or type(e).__name__
