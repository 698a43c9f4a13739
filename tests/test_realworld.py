"""WebVision-Mini and Clothing1M loaders, random resized crop, ResNet-50 and
--pretrained: tiny synthetic JPEG trees in each dataset's original layout are
read through the real loaders and train.py (no real data exists here)."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

import data
import realworld
import nets
import train

SIZE = 16


def color(label, k):
    """A distinct solid colour per (label, index), far apart so JPEG loss cannot blur them."""
    return (10 + 20 * (label % 12), 40 + 50 * (k % 4), 200 - 15 * (label // 12))


def write_jpeg(path, rgb, wh=(24, 18)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", wh, rgb).save(path, quality=95)


def write_list(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(" ".join(str(c) for c in r) + "\n" for r in rows)


def make_webvision(root, train_labels=(0, 1, 2, 49, 50, 3, 999, 1), val_labels=(0, 49, 60, 2)):
    """WebVision 1.0 layout: info/ lists, google/qXXXX/ train JPEGs, val_images_256/."""
    train_rows, val_rows = [], []
    for k, y in enumerate(train_labels):
        rel = f"google/q{y + 1:04d}/{k:06d}.jpg"
        write_jpeg(os.path.join(root, rel), color(y % 50, k))
        train_rows.append((rel, y))
    for k, y in enumerate(val_labels):
        name = f"val{k + 1:06d}.jpg"
        write_jpeg(os.path.join(root, "val_images_256", name), color(y % 50, k), wh=(20, 30))
        val_rows.append((name, y))
    write_list(os.path.join(root, "info", "train_filelist_google.txt"), train_rows)
    write_list(os.path.join(root, "info", "val_filelist.txt"), val_rows)
    return train_rows, val_rows


def make_imagenet_val(root, wv_root, per_class={0: 2, 3: 1, 49: 1, 50: 3}, synsets_file=True):
    """ILSVRC12 val in one folder per synset (52 synsets, images in a few); optionally
    WebVision's info/synsets.txt, listing the synsets in class order (here NOT sorted,
    so the file, not the folder order, must decide the labels)."""
    wnids = [f"n{9000000 - 1000 * c:08d}" for c in range(52)]   # descending: sorted order differs
    for c, wnid in enumerate(wnids):
        os.makedirs(os.path.join(root, wnid), exist_ok=True)
        for k in range(per_class.get(c, 0)):
            write_jpeg(os.path.join(root, wnid, f"ILSVRC2012_val_{c:03d}{k:02d}.JPEG"), color(c % 50, k))
    if synsets_file:
        write_list(os.path.join(wv_root, "info", "synsets.txt"), [(w, "a", "name") for w in wnids])
    return wnids


def make_clothing1m(root, n_train=42, n_test=14, n_val=14, sorted_train=False):
    """Clothing1M layout: kv label files, key lists, images/x/yz/*.jpg. Train keys carry
    noisy labels (clean label + 1 mod 14 where a clean one exists), test/val clean ones."""
    noisy, clean, keys = [], [], {"train": [], "test": [], "val": []}
    k = 0
    for split, n in (("train", n_train), ("test", n_test), ("val", n_val)):
        for i in range(n):
            y = i * 14 // n if (sorted_train and split == "train") else i % 14
            key = f"images/{k % 10}/{k:02d}/{k:06d}.jpg"
            label_in_image = y if split != "train" else (y + 1) % 14   # pixels follow the label read
            write_jpeg(os.path.join(root, key), color(label_in_image, k))
            if split == "train":
                noisy.append((key, (y + 1) % 14))
                clean.append((key, y))            # some train images also have clean labels (as in Clothing1M)
            else:
                clean.append((key, y))
                noisy.append((key, (y + 5) % 14))
            keys[split].append(key)
            k += 1
    write_list(os.path.join(root, "noisy_label_kv.txt"), noisy)
    write_list(os.path.join(root, "clean_label_kv.txt"), clean)
    write_list(os.path.join(root, "noisy_train_key_list.txt"), [(x,) for x in keys["train"]])
    write_list(os.path.join(root, "clean_test_key_list.txt"), [(x,) for x in keys["test"]])
    write_list(os.path.join(root, "clean_val_key_list.txt"), [(x,) for x in keys["val"]])
    return keys


def mean_colors(x):
    """(N, 3, H, W) uint8 -> (N, 3) mean colour of each image."""
    return x.double().mean((2, 3))


def assert_colors(x, labels, indices):
    want = torch.tensor([color(int(y) % 50, k) for y, k in zip(labels, indices)], dtype=torch.float64)
    assert (mean_colors(x) - want).abs().max() <= 4  # JPEG q95 on solid colours


# ---------------------------------------------------------------- loaders

def test_webvision_keeps_first_50_classes_in_list_order(tmp_path):
    make_webvision(str(tmp_path))
    ds = data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE, workers=2)
    assert ds.num_classes == 50 and not ds.clean_train_known
    assert ds.y_train.tolist() == [0, 1, 2, 49, 3, 1] and ds.y_test.tolist() == [0, 49, 2]
    assert ds.x_train.shape == (6, 3, SIZE, SIZE) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(ds.noisy_train, ds.y_train) and ds.x_val is None
    assert_colors(ds.x_train, ds.y_train, [0, 1, 2, 3, 5, 7])
    assert_colors(ds.x_test, ds.y_test, [0, 1, 3])


def test_webvision_two_column_lists_replace_the_info_files(tmp_path):
    rows, _ = make_webvision(str(tmp_path))
    write_list(str(tmp_path / "mine" / "train.txt"), rows[:3])
    write_list(str(tmp_path / "mine" / "test.txt"), rows[3:4])
    ds = data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE, workers=1,
                           train_list=str(tmp_path / "mine" / "train.txt"),
                           test_list=str(tmp_path / "mine" / "test.txt"))
    assert ds.y_train.tolist() == [0, 1, 2] and ds.y_test.tolist() == [49]
    assert_colors(ds.x_test, ds.y_test, [3])


def test_imagenet_val_takes_the_first_50_synsets_in_webvision_order(tmp_path):
    make_webvision(str(tmp_path / "wv"))
    make_imagenet_val(str(tmp_path / "inet"), str(tmp_path / "wv"))
    ds = data.load_dataset("webvision-mini", str(tmp_path / "wv"), image_size=SIZE,
                           imagenet_val_dir=str(tmp_path / "inet"))
    assert ds.y_val.tolist() == [0, 0, 3, 49] and ds.x_val.shape == (4, 3, SIZE, SIZE)
    assert_colors(ds.x_val, ds.y_val, [0, 1, 0, 0])


def test_imagenet_val_without_synsets_file_uses_sorted_folders(tmp_path):
    """Folders are named in descending order of the helper's index c, so sorted
    position = 51 - c: c = 51 is class 0, c = 2 is class 49, c = 0 is class 51 (dropped)."""
    make_webvision(str(tmp_path / "wv"))
    make_imagenet_val(str(tmp_path / "inet"), str(tmp_path / "wv"), per_class={51: 1, 2: 1, 0: 1}, synsets_file=False)
    ds = data.load_dataset("webvision-mini", str(tmp_path / "wv"), image_size=SIZE,
                           imagenet_val_dir=str(tmp_path / "inet"))
    assert ds.y_val.tolist() == [0, 49]
    assert_colors(ds.x_val, [51, 2], [0, 0])   # the images of folders c = 51 and c = 2


def test_imagenet_val_missing_synset_folder_is_named(tmp_path):
    make_webvision(str(tmp_path / "wv"))
    wnids = make_imagenet_val(str(tmp_path / "inet"), str(tmp_path / "wv"))
    os.rmdir(tmp_path / "inet" / wnids[7])
    with pytest.raises(data.DataError, match=f"no folder {wnids[7]} \\(class 7\\)"):
        data.load_dataset("webvision-mini", str(tmp_path / "wv"), image_size=SIZE,
                          imagenet_val_dir=str(tmp_path / "inet"))


def test_clothing1m_trains_on_noisy_labels_and_tests_on_clean(tmp_path):
    make_clothing1m(str(tmp_path))
    ds = data.load_dataset("clothing1m", str(tmp_path), image_size=SIZE, workers=2)
    assert ds.num_classes == 14 and not ds.clean_train_known
    assert len(ds.y_train) == 42 and len(ds.y_test) == 14 and len(ds.y_val) == 14
    assert ds.y_train.tolist() == [(i % 14 + 1) % 14 for i in range(42)]          # noisy kv
    assert ds.y_test.tolist() == list(range(14)) and ds.y_val.tolist() == list(range(14))  # clean kv
    assert ds.x_val.shape == (14, 3, SIZE, SIZE)
    assert_colors(ds.x_train, ds.y_train, range(42))
    assert_colors(ds.x_test, ds.y_test, range(42, 56))
    assert_colors(ds.x_val, ds.y_val, range(56, 70))


def test_samples_draws_a_class_balanced_subset_of_the_noisy_set(tmp_path):
    make_clothing1m(str(tmp_path), n_train=70, sorted_train=True)   # class blocks of 5: a prefix is unbalanced
    ds = data.load_dataset("clothing1m", str(tmp_path), image_size=SIZE, samples=28, seed=3, workers=2)
    assert len(ds.y_train) == 28
    assert torch.bincount(ds.y_train, minlength=14).tolist() == [2] * 14


def test_each_epoch_draws_its_own_balanced_subset_and_epoch_1_is_the_loaded_one(tmp_path):
    keys = make_clothing1m(str(tmp_path), n_train=70, sorted_train=True)
    ds = data.load_dataset("clothing1m", str(tmp_path), image_size=SIZE, samples=28, seed=3, workers=2)
    paths, labels = ds.train_pool
    assert len(paths) == 70 and torch.equal(torch.from_numpy(labels)[ds.train_ids], ds.y_train)
    draws = [realworld.draw_train_subset(ds.train_pool, 28, 3, e, SIZE, 2) for e in (1, 2, 3)]
    assert torch.equal(draws[0][2], ds.train_ids) and torch.equal(draws[0][0], ds.x_train)
    for x, y, ids in draws:
        assert torch.bincount(y, minlength=14).tolist() == [2] * 14
        assert_colors(x, y, ids.tolist())   # the right images: their pixels encode their label and index
    assert len({tuple(ids.tolist()) for _, _, ids in draws}) == 3     # new images every epoch
    again = realworld.draw_train_subset(ds.train_pool, 28, 3, 2, SIZE, 2)
    assert torch.equal(again[2], draws[1][2]) and torch.equal(again[0], draws[1][0])


def test_test_images_are_resized_to_8_7_of_the_size_then_centre_cropped(tmp_path):
    """A white 64x64 image with a black 4-pixel frame. The test transform resizes it to
    18x18 (16·256/224) and crops the central 16x16, which cuts the frame away, so the
    crop's edge pixels stay bright; a plain resize to 16x16 would keep them dark."""
    write_list(str(tmp_path / "info" / "train_filelist_google.txt"), [("a.jpg", 0)])
    write_list(str(tmp_path / "info" / "val_filelist.txt"), [("b.jpg", 0)])
    write_jpeg(str(tmp_path / "a.jpg"), (0, 0, 0))
    im = Image.new("RGB", (64, 64), (0, 0, 0))
    im.paste((250, 250, 250), (4, 4, 60, 60))
    os.makedirs(tmp_path / "val_images_256")
    im.save(str(tmp_path / "val_images_256" / "b.jpg"), quality=95)
    ds = data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE)
    x = ds.x_test[0].double()
    assert x.shape == (3, SIZE, SIZE)
    edges = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
    assert edges.mean() > 150 and x[:, 4:12, 4:12].min() > 230


@settings(max_examples=25)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6), n=st.integers(0, 120), seed=st.integers(0, 5))
def test_balanced_subset_gives_equal_counts_within_one_except_exhausted_classes(counts, n, seed):
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)]).long()
    idx = realworld.balanced_subset(labels, n, seed)
    assert len(idx) == min(n, len(labels)) and torch.equal(idx, idx.unique())
    got = torch.bincount(labels[idx], minlength=len(counts))
    have = torch.tensor(counts)
    open_ = got < have  # classes with samples left over
    if open_.any():
        assert got[open_].max() - got[open_].min() <= 1
        # exhausted classes got no more than a share (+1: a class may be exhausted by the remainder,
        # e.g. counts 6, 30, 30 and n = 65 give 6, 29, 30)
        assert (got[~open_] <= got[open_].max() + 1).all()
    assert torch.equal(idx, realworld.balanced_subset(labels, n, seed))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("missing", ["noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt",
                                     "clean_test_key_list.txt", "clean_val_key_list.txt"])
def test_missing_clothing1m_list_names_the_file(tmp_path, missing):
    make_clothing1m(str(tmp_path), n_train=14)
    os.remove(tmp_path / missing)
    with pytest.raises(data.DataError, match=missing) as e:
        data.load_dataset("clothing1m", str(tmp_path), image_size=SIZE)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["train_filelist_google.txt", "val_filelist.txt"])
def test_missing_webvision_list_names_the_file(tmp_path, missing):
    make_webvision(str(tmp_path))
    os.remove(tmp_path / "info" / missing)
    with pytest.raises(data.DataError, match=missing) as e:
        data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE)
    assert "\n" not in str(e.value)


def test_malformed_list_line_names_the_file_and_line(tmp_path):
    make_webvision(str(tmp_path))
    with open(tmp_path / "info" / "val_filelist.txt", "a") as f:
        f.write("val000099.jpg cat\n")
    with pytest.raises(data.DataError, match=r"val_filelist.txt line 5"):
        data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE)


def test_key_without_label_names_the_key_and_the_label_file(tmp_path):
    make_clothing1m(str(tmp_path), n_train=14)
    with open(tmp_path / "clean_test_key_list.txt", "a") as f:
        f.write("images/9/99/nowhere.jpg\n")
    with pytest.raises(data.DataError, match=r"clean_label_kv.txt \(e.g. images/9/99/nowhere.jpg\)"):
        data.load_dataset("clothing1m", str(tmp_path), image_size=SIZE)


def test_missing_or_corrupt_image_names_the_image(tmp_path):
    make_webvision(str(tmp_path))
    with open(tmp_path / "val_images_256" / "val000002.jpg", "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(data.DataError, match="val000002.jpg"):
        data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE, workers=2)


def test_missing_pillow_is_one_line_naming_pillow(tmp_path, monkeypatch):
    make_webvision(str(tmp_path))
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.raises(data.DataError, match="Pillow"):
        data.load_dataset("webvision-mini", str(tmp_path), image_size=SIZE)


# ---------------------------------------------------------------- augmentation

def test_full_scale_square_crop_is_the_image_or_its_mirror():
    x = torch.rand(32, 3, 8, 8)
    y = realworld.random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = (y - x).abs().amax((1, 2, 3)) < 1e-5
    mirrored = (y - x.flip(3)).abs().amax((1, 2, 3)) < 1e-5
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_resized_crop_zooms_into_one_region():
    """With area 1/4, each output is a 2x upsampled quarter: a constant image stays
    constant, and a crop of a horizontal ramp spans about half the ramp's range."""
    ramp = torch.linspace(0, 1, 32).expand(16, 3, 32, 32)
    y = realworld.random_resized_crop_flip(ramp, torch.Generator().manual_seed(1), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    spread = y.amax((1, 2, 3)) - y.amin((1, 2, 3))
    assert torch.allclose(spread, torch.full_like(spread, 0.5), atol=0.05)
    c = torch.full((4, 3, 8, 8), 0.3)
    assert torch.allclose(realworld.random_resized_crop_flip(c, torch.Generator().manual_seed(2)), c)


# ---------------------------------------------------------------- train.py

def test_clothing1m_one_epoch_run_with_pretrained_resnet50(tmp_path, capsys):
    make_clothing1m(str(tmp_path / "c1m"), n_train=28)
    torch.save(nets.make_backbone("resnet50", (3, 32, 32)).state_dict(), tmp_path / "r50.pth")
    out = str(tmp_path / "run")
    rc = train.main(["--dataset", "clothing1m", "--data-dir", str(tmp_path / "c1m"), "--noise", "none",
                     "--image-size", "32", "--backbone", "resnet50", "--pretrained", str(tmp_path / "r50.pth"),
                     "--epochs", "1", "--batch-size", "14", "--decode-workers", "2", "--lr", "1e-9", "--out", out])
    assert rc == 0, capsys.readouterr().err
    assert "noise unknown" in capsys.readouterr().out
    report = json.load(open(os.path.join(out, "noise_report.json")))
    assert report["rate"] is None and report["clean_labels"] == "unknown"
    row = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][0]
    assert np.isfinite(row["train_loss"]) and 0 <= row["val_acc_clean"] <= 1
    assert row["train_acc_clean"] is None and row["grad_cos_last"] is None
    assert json.load(open(os.path.join(out, "final.json")))["noise_rate"] is None
    saved = torch.load(tmp_path / "r50.pth")["layer3.1.conv2.weight"]
    trained = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["nets"][0]["backbone.layer3.1.conv2.weight"]
    assert torch.allclose(saved, trained, atol=1e-6)   # the run started from the file's weights (lr ~ 0)


def test_webvision_one_epoch_run_with_mlp(tmp_path, capsys):
    make_webvision(str(tmp_path / "wv"), train_labels=tuple(range(8)) * 2)
    make_imagenet_val(str(tmp_path / "inet"), str(tmp_path / "wv"))
    out = str(tmp_path / "run")
    rc = train.main(["--dataset", "webvision-mini", "--data-dir", str(tmp_path / "wv"), "--noise", "none",
                     "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--samples-per-epoch", "8",
                     "--imagenet-val-dir", str(tmp_path / "inet"), "--out", out])
    assert rc == 0, capsys.readouterr().err
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["n_train"] == 8
    row = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][0]
    assert 0 <= row["imagenet_acc"] <= 1 and "val_acc_clean" not in row


def clothing_run(tmp_path, name, *flags):
    out = str(tmp_path / name)
    rc = train.main(["--dataset", "clothing1m", "--data-dir", str(tmp_path / "c1m"), "--noise", "none",
                     "--image-size", "16", "--samples-per-epoch", "14", "--batch-size", "7",
                     "--decode-workers", "2", "--out", out, *flags])
    assert rc == 0
    return out


def metrics(out):
    drop = {"seconds", "eta_s", "samples_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(os.path.join(out, "metrics.jsonl"))]


def test_samples_per_epoch_redraws_every_epoch_and_resumes_exactly(tmp_path, capsys):
    make_clothing1m(str(tmp_path / "c1m"), n_train=42)
    full = clothing_run(tmp_path, "full", "--epochs", "3", "--method", "elr")
    assert capsys.readouterr().out.count("new class-balanced subset of 14 images") == 2   # epochs 2 and 3
    part = clothing_run(tmp_path, "part", "--epochs", "3", "--method", "elr", "--stop-after", "2")
    assert train.main(["--out", part, "--resume", "--epochs", "3"]) == 0
    assert metrics(full) == metrics(part)
    a, b = (torch.load(os.path.join(o, "checkpoint.pt"), weights_only=False) for o in (full, part))
    assert all(torch.equal(a["nets"][0][k], b["nets"][0][k]) for k in a["nets"][0])
    assert torch.equal(a["elr_t"], b["elr_t"])
    # the ELR memory has a row per image of the whole noisy list; rows never drawn stay zero
    ids = set().union(*(realworld.balanced_subset(torch.tensor([(i % 14 + 1) % 14 for i in range(42)]), 14,
                                                    realworld.subset_seed(0, e)).tolist() for e in (1, 2, 3)))
    assert a["elr_t"].shape == (42, 14)
    assert set(a["elr_t"].abs().sum(1).nonzero()[:, 0].tolist()) == ids and len(ids) < 42


def test_subset_once_keeps_epoch_1_subset(tmp_path, capsys):
    make_clothing1m(str(tmp_path / "c1m"), n_train=42)
    once = clothing_run(tmp_path, "once", "--epochs", "2", "--subset-once", "--method", "elr")
    assert "new class-balanced subset" not in capsys.readouterr().out
    assert torch.load(os.path.join(once, "checkpoint.pt"), weights_only=False)["elr_t"].shape == (14, 14)
    redrawn = clothing_run(tmp_path, "redrawn", "--epochs", "2", "--method", "elr")
    assert metrics(once)[0] == metrics(redrawn)[0] and metrics(once)[1] != metrics(redrawn)[1]


def test_validation_split_with_redrawn_subsets_is_refused_before_any_image_is_decoded(tmp_path, capsys, monkeypatch):
    make_clothing1m(str(tmp_path / "c1m"), n_train=28)
    decoded = []
    real_decode = realworld.decode_images
    monkeypatch.setattr(realworld, "decode_images", lambda paths, *a, **k: decoded.append(len(paths)) or real_decode(paths, *a, **k))
    rc = train.main(["--dataset", "clothing1m", "--data-dir", str(tmp_path / "c1m"), "--noise", "none", "--image-size", "16",
                     "--samples-per-epoch", "14", "--val-frac", "0.2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "add --subset-once" in err and err.count("\n") == 1
    assert decoded == []                       # refused before minutes of JPEG decoding


@pytest.mark.parametrize("flags, words", [
    (["--dataset", "digits", "--image-size", "16"], "--image-size apply to webvision-mini and clothing1m only"),
    (["--dataset", "clothing1m", "--data-dir", "x"], "brings its own human noise"),
    (["--dataset", "digits", "--pretrained", "/nonexistent.pth"], "--pretrained /nonexistent.pth does not exist"),
    (["--dataset", "digits", "--subset-once"], "--subset-once needs --samples-per-epoch"),
])
def test_bad_real_world_flags_give_one_line(tmp_path, capsys, flags, words):
    assert train.main(flags + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_track_grad_error_is_refused_without_clean_labels(tmp_path, capsys):
    make_clothing1m(str(tmp_path / "c1m"), n_train=14)
    rc = train.main(["--dataset", "clothing1m", "--data-dir", str(tmp_path / "c1m"), "--noise", "none",
                     "--image-size", "16", "--track-grad-error", "--out", str(tmp_path / "run")])
    assert rc == 2 and "needs the clean training labels" in capsys.readouterr().err
