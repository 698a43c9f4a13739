"""WebVision-Mini and Clothing1M for dcm-ref: the real-world noisy datasets of the
paper's experiments (docs/realworld.md), read from their original layouts (file lists
+ JPEGs), decoded once into uint8 tensors so training keeps data.py's all-tensors pipeline.

    ds = data.load_dataset("clothing1m", "/data/clothing1m", image_size=224, samples=64000)
    xb = random_resized_crop_flip(ds.x_train[:128].float(), torch.Generator())  # train transform
    ds.x_test.shape                                                           # (M, 3, 224, 224)

This module imports nothing of dcm-ref: data.load_dataset calls it and wraps its
fields into a data.Dataset. Every problem with the files is a ValueError with one
line naming what is wrong and how to fix it (data.py re-raises it as DataError).
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- WebVision-Mini, Clothing1M (JPEG)
# The JPEGs are decoded ONCE at load time by a pool of threads (Pillow releases
# the GIL while decoding and resizing) into one uint8 tensor, so training keeps
# the same all-tensors pipeline as the small datasets: random resized crop and
# flip are batch tensor ops (random_resized_crop_flip). Memory: 3·S² bytes per
# image, 150 kB at S = 224, so ~10 GB for WebVision-Mini's ~66k training images;
# Clothing1M's 1M noisy images do not fit, hence `samples` (a class-balanced
# subset, drawn once per run from the seed).

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WEBVISION_CLASSES = 50   # "mini": the first 50 classes of WebVision 1.0 (Google images)
CLOTHING1M_CLASSES = 14
TEST_RESIZE = 256 / 224  # test: shorter side to 256 then centre crop 224 (ImageNet convention)
HOW_TO_GET = {
    "webvision-mini": "download WebVision 1.0 (resized, Google part + info + val) from "
                      "https://data.vision.ee.ethz.ch/cvl/webvision/download.html and pass --data-dir",
    "clothing1m": "request Clothing1M from its authors (https://github.com/Cysu/noisy_label) and pass --data-dir",
}


def load_image_dataset(name, data_dir, image_size=224, samples=0, seed=0, workers=8,
                       train_list=None, test_list=None, imagenet_val_dir=None, redraw_refused=None):
    """WebVision-Mini or Clothing1M from its original layout (docs/realworld.md) as data.Dataset's fields.

    Train images: shorter side resized to image_size, centre crop (S, S) with
    S = image_size (random_resized_crop_flip then crops from it at batch time);
    test/val images: shorter side to round(S·256/224), centre crop (S, S).
    samples > 0: epoch 1's seeded class-balanced subset (draw_train_subset) of the
    noisy training list, which is kept in train_pool for the later epochs' draws.
    train_list / test_list (webvision-mini): two-column `path label` files
    replacing info/*.txt, paths relative to data_dir.
    imagenet_val_dir (webvision-mini): ILSVRC12 val sorted into one folder per
    synset; its first 50 classes become the second clean set (x_val, y_val).
    redraw_refused: why the caller cannot train on a new subset every epoch; raised
    (ValueError) before any image is decoded when samples would draw one.
    The training labels are the noisy ones (noisy_train == y_train,
    clean_train_known False). Returns a dict of data.Dataset's fields (3-channel, uint8).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"--image-size must be an integer >= 8, got {image_size!r}")
    if not isinstance(samples, int) or samples < 0:
        raise ValueError(f"--samples-per-epoch must be an integer >= 0, got {samples!r}")
    if name == "clothing1m" and (train_list is not None or test_list is not None or imagenet_val_dir is not None):
        raise ValueError("--train-list/--test-list/--imagenet-val-dir apply to webvision-mini only, not to clothing1m")
    folder = _image_folder(name, data_dir)
    if name == "webvision-mini":
        (tr_p, tr_y), (te_p, te_y) = _webvision_lists(folder, train_list, test_list)
        val, C = None, WEBVISION_CLASSES
        if imagenet_val_dir is not None:
            val = _imagenet_val(imagenet_val_dir, folder)
    else:
        (tr_p, tr_y), (te_p, te_y), val = _clothing1m_lists(folder)
        C = CLOTHING1M_CLASSES
    pool, ids = None, None
    if redraw_refused is not None and 0 < samples < len(tr_y):   # before minutes of decoding
        raise ValueError(redraw_refused)
    if 0 < samples < len(tr_y):   # else every image, decoded once
        pool = (tr_p, tr_y)
        x_train, y_train, ids = draw_train_subset(pool, samples, seed, 1, image_size, workers)
    else:
        x_train, y_train = decode_images(tr_p, image_size, image_size, workers), torch.from_numpy(tr_y)
    test_resize = round(image_size * TEST_RESIZE)
    x_test = decode_images(te_p, image_size, test_resize, workers)
    extra = {}
    if val is not None:
        extra = dict(x_val=decode_images(val[0], image_size, test_resize, workers), y_val=torch.from_numpy(val[1]))
    # ImageNet statistics, not the data's: the pretrained ResNet-50 expects them.
    return dict(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=torch.from_numpy(te_y),
                num_classes=C, mean=IMAGENET_MEAN, std=IMAGENET_STD, noisy_train=y_train.clone(),
                clean_train_known=False, train_pool=pool, train_ids=ids, **extra)


def subset_seed(seed, epoch):
    """Seed of epoch's class-balanced training subset (epochs count from 1; epoch 1 uses `seed`)."""
    return seed + 1000003 * (epoch - 1)


def draw_train_subset(pool, n, seed, epoch, image_size, workers=8):
    """Epoch's seeded class-balanced subset of the noisy training list, decoded.

    pool: (paths, labels (P,) int64 numpy). -> x (n', 3, S, S) uint8 (S = image_size,
    training transform), y (n',) int64, ids (n',) int64 sorted rows of the pool, with
    n' = min(n, P). The same (seed, epoch) always gives the same subset, so a resumed
    run redraws exactly the subset its epoch had.
    """
    paths, labels = pool
    ids = balanced_subset(labels, n, subset_seed(seed, epoch))
    x = decode_images([paths[i] for i in ids.tolist()], image_size, image_size, workers)
    return x, torch.from_numpy(labels[ids.numpy()]), ids


def balanced_subset(labels, n, seed):
    """Seeded class-balanced subset: sorted indices (min(n, N),) int64 into labels (N,).

    Every class gets the same count (within 1); a class with fewer samples than
    its share gives all of them and the rest is spread over the larger classes
    (water-filling from the smallest class up), so the total is exactly min(n, N).
    Clothing1M's usual protocol draws n/14 images per class of the noisy set.
    """
    labels = torch.as_tensor(labels).long().cpu()
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    classes, counts = torch.unique(labels, return_counts=True)
    order = torch.sort(counts, stable=True).indices            # smallest class first
    take, rem = torch.zeros_like(counts), min(n, labels.numel())
    for k, c in enumerate(order.tolist()):
        take[c] = min(int(counts[c]), rem // (len(order) - k))
        rem -= int(take[c])
    g = torch.Generator().manual_seed(seed)
    picked = [torch.nonzero(labels == cls).flatten()[torch.randperm(int(cnt), generator=g)[:int(t)]]
              for cls, cnt, t in zip(classes.tolist(), counts.tolist(), take.tolist())]
    return torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.int64)


def random_resized_crop_flip(x, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """ImageNet's training transform as one batch op: x (B, C, H, W) float -> (B, C, H, W).

    Each sample gets a crop of area fraction s ~ U(scale) and aspect ratio r with
    log r ~ U(log ratio), at a uniform position, resampled bilinearly to H×W, then
    mirrored with probability 1/2 (one affine_grid + grid_sample for the batch).
    A side longer than the image is clamped to the image (torchvision instead
    retries and falls back to a centre crop). `generator` lives on x's device.
    """
    B, dev = x.shape[0], x.device
    u = torch.rand(5, B, generator=generator, device=dev)
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    w, h = torch.sqrt(s * r).clamp(max=1.0), torch.sqrt(s / r).clamp(max=1.0)  # fractions of W, H
    cx, cy = (2 * u[2] - 1) * (1 - w), (2 * u[3] - 1) * (1 - h)   # centres in [-1, 1] coordinates
    sign = torch.where(u[4] < 0.5, -1.0, 1.0)                      # -1: mirrored crop
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def decode_image(path, size, resize_to):
    """One image file -> (3, size, size) uint8: RGB, shorter side resized to
    resize_to (>= size, antialiased bilinear), centre crop size × size."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            im.draft("RGB", (resize_to, resize_to))  # JPEG: decode at the smallest DCT scale >= target (fast)
            im = im.convert("RGB")
            w, h = im.size
            k = resize_to / min(w, h)
            nw, nh = max(size, round(w * k)), max(size, round(h * k))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
    except (OSError, SyntaxError, ValueError) as e:  # missing, truncated or not an image
        raise ValueError(f"cannot read image {path} ({' '.join(str(e).split()) or type(e).__name__}); check the file or the list naming it") from None


def decode_images(paths, size, resize_to, workers=8):
    """Decode every path (decode_image) with a pool of `workers` threads -> (N, 3, size, size) uint8."""
    _pillow()  # a missing Pillow is one clear error, before any thread starts
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def one(i):
        out[i] = decode_image(paths[i], size, resize_to)
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        for _ in pool.map(one, range(len(paths))):  # iterating re-raises a worker's ValueError
            pass
    return torch.from_numpy(out)


def _pillow():
    """PIL.Image, imported lazily: only the JPEG datasets need Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("webvision-mini and clothing1m need Pillow to decode JPEGs: pip install 'Pillow>=9'") from None
    return Image


def _image_folder(name, data_dir):
    """The existing data folder of an image dataset; ValueError otherwise."""
    if data_dir is None:
        raise ValueError(f"{name} needs --data-dir DIR (layout in docs/realworld.md); to get it: {HOW_TO_GET[name]}")
    if not os.path.isdir(data_dir):
        raise ValueError(f"{name}: data directory {data_dir} does not exist (or is not a folder); "
                        f"to get it: {HOW_TO_GET[name]}")
    return data_dir


def _read_list(path, name, columns):
    """A text list of `columns` whitespace-separated fields per line -> list of tuples of str."""
    if not os.path.isfile(path):
        raise ValueError(f"{name}: list file {path} is missing (layout in docs/realworld.md); "
                        f"to get it: {HOW_TO_GET[name]}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != columns or (columns == 2 and not parts[1].lstrip("-").isdigit()):
                expected = "'path label'" if columns == 2 else "one path"
                raise ValueError(f"{name}: {path} line {i} is {line.strip()[:80]!r}; expected {expected} per line")
            rows.append(tuple(parts))
    if not rows:
        raise ValueError(f"{name}: list file {path} is empty")
    return rows


def _labelled(path, name, root, num_classes, keep_below=False):
    """`path label` list -> (absolute paths, labels (N,) int64); labels must lie in
    0..num_classes-1, or with keep_below the others are dropped (WebVision's first 50)."""
    rows = _read_list(path, name, 2)
    y = np.array([int(r[1]) for r in rows], dtype=np.int64)
    ok = (y >= 0) & (y < num_classes)
    if not keep_below and not ok.all():
        raise ValueError(f"{name}: {path} has labels outside 0..{num_classes - 1} (e.g. {int(y[~ok][0])})")
    paths = [os.path.join(root, r[0]) for r, k in zip(rows, ok) if k]
    if not paths:
        raise ValueError(f"{name}: {path} has no image with a label in 0..{num_classes - 1}")
    return paths, y[ok]


def _webvision_lists(folder, train_list, test_list):
    """WebVision 1.0: info/train_filelist_google.txt (paths relative to the data
    folder) and info/val_filelist.txt (names in val_images_256/), classes < 50."""
    name, C = "webvision-mini", WEBVISION_CLASSES
    train = _labelled(train_list or os.path.join(folder, "info", "train_filelist_google.txt"), name, folder, C, True)
    if test_list is not None:
        test = _labelled(test_list, name, folder, C, True)
    else:
        test = _labelled(os.path.join(folder, "info", "val_filelist.txt"), name,
                         os.path.join(folder, "val_images_256"), C, True)
    return train, test


def _imagenet_val(imagenet_dir, folder):
    """ILSVRC12 val images of WebVision's first 50 classes -> (paths, labels (V,) int64).

    WebVision 1.0 shares ILSVRC12's 1000 classes in the same order: class c is
    line c of info/synsets.txt ("n01440764 tench, ..."), or, without that file,
    the c-th synset folder of imagenet_dir in sorted order (ILSVRC's order).
    """
    name = "webvision-mini"
    if not os.path.isdir(imagenet_dir):
        raise ValueError(f"{name}: --imagenet-val-dir {imagenet_dir} does not exist (or is not a folder)")
    listed = os.path.join(folder, "info", "synsets.txt")
    if os.path.isfile(listed):
        synsets = [r[0] for r in _read_list_loose(listed)][:WEBVISION_CLASSES]
    else:
        synsets = sorted(f for f in os.listdir(imagenet_dir) if os.path.isdir(os.path.join(imagenet_dir, f)))
        synsets = synsets[:WEBVISION_CLASSES]
    paths, labels = [], []
    for c, wnid in enumerate(synsets):
        sub = os.path.join(imagenet_dir, wnid)
        if not os.path.isdir(sub):
            raise ValueError(f"{name}: --imagenet-val-dir {imagenet_dir} has no folder {wnid} (class {c}); "
                            f"expected ILSVRC12 val sorted into one folder per synset")
        names = sorted(f for f in os.listdir(sub) if not f.startswith("."))
        paths += [os.path.join(sub, f) for f in names]
        labels += [c] * len(names)
    if not paths:
        raise ValueError(f"{name}: --imagenet-val-dir {imagenet_dir} has no images in its first "
                        f"{WEBVISION_CLASSES} synset folders")
    return paths, np.array(labels, dtype=np.int64)


def _read_list_loose(path):
    """Lines of a text file split on whitespace (the first field is used), blank lines skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.split() for line in f if line.split()]


def _clothing1m_lists(folder):
    """Clothing1M: (train paths, noisy labels), (test paths, clean labels), (val paths, clean labels).

    Train = noisy_train_key_list.txt labelled by noisy_label_kv.txt; test and
    val = clean_{test,val}_key_list.txt labelled by clean_label_kv.txt. Keys
    are paths relative to the data folder (images/x/yz/....jpg).
    """
    name, C = "clothing1m", CLOTHING1M_CLASSES
    kv = {}
    for which in ("noisy", "clean"):
        path = os.path.join(folder, f"{which}_label_kv.txt")
        keys, y = _labelled(path, name, "", C)
        kv[which] = (dict(zip(keys, y.tolist())), path)
    splits = []
    for which, stem in (("noisy", "noisy_train"), ("clean", "clean_test"), ("clean", "clean_val")):
        path = os.path.join(folder, f"{stem}_key_list.txt")
        keys = [r[0] for r in _read_list(path, name, 1)]
        table, kv_path = kv[which]
        missing = [k for k in keys if k not in table]
        if missing:
            raise ValueError(f"{name}: {len(missing)} keys of {path} have no label in {kv_path} (e.g. {missing[0]})")
        splits.append(([os.path.join(folder, k) for k in keys], np.array([table[k] for k in keys], dtype=np.int64)))
    return splits
