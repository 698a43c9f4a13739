"""Tests for data.py: loaders read tiny files written here in each real format
(IDX .gz, Python-2 CIFAR pickles), the committed digits file, real Fashion-MNIST,
stratified subsets and batch augmentation."""
import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import data
import noise
from conftest import save_cifar_n
from data import DataError, load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raises_one_line(fn, *words):
    """Call fn, expect DataError with a one-line message containing every word."""
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ---------------------------------------------------------------- writers of real formats

def idx_bytes(a, magic=None):
    """IDX encoding of a uint8 array: 0x0000 08 ndim, big-endian uint32 dims, data."""
    magic = 0x800 + a.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_idx_dir(folder, n_train=12, n_test=5, hw=(6, 7), gz=True, seed=0):
    """The four (Fashion-)MNIST files with random content; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    os.makedirs(folder, exist_ok=True)
    for stem, a in arrays.items():
        raw = idx_bytes(a)
        path = os.path.join(folder, stem + (".gz" if gz else ""))
        with (gzip.open if gz else open)(path, "wb") as f:
            f.write(raw)
    return arrays


_RECONSTRUCT = np.empty(0).__reduce__()[0]


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the official CIFAR batches:
    protocol 2, every string a byte string (BINSTRING), arrays rebuilt by
    numpy.core.multiarray._reconstruct (the module name of that era)."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[bytes] = dispatch[str] = save_string

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        else:
            super().save_global(obj, name)


def write_py2_pickle(path, obj):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10(parent, per_batch=3, n_test=4, seed=0):
    """cifar-10-batches-py with 5 train batches and a test batch; returns (x (N,3072), labels)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(parent, "cifar-10-batches-py")
    os.makedirs(folder)
    xs, ys = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        write_py2_pickle(os.path.join(folder, name), {b"batch_label": b"training batch", b"labels": y,
                                                      b"data": x, b"filenames": [b"a.png"] * n})
        xs.append(x), ys.append(y)
    return folder, xs, ys


def write_cifar100(parent, n_train=8, n_test=3, seed=0):
    """cifar-100-python/{train,test}; coarse label of fine class f is f // 5 here."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(parent, "cifar-100-python")
    os.makedirs(folder)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x, fine = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 100, n)
        write_py2_pickle(os.path.join(folder, name), {b"data": x, b"fine_labels": fine.tolist(),
                                                      b"coarse_labels": (fine // 5).tolist()})
        out[name] = (x, fine)
    return folder, out


# ---------------------------------------------------------------- digits (embedded default)

def test_digits_has_1297_train_and_500_test_images_of_1x8x8_uint8():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1297, 1, 8, 8) and ds.x_test.shape == (500, 1, 8, 8)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.uint8
    assert ds.y_train.shape == (1297,) and ds.y_test.shape == (500,)
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.num_classes == 10 and ds.name == "digits"
    assert ds.noisy_train is None and ds.coarse_train is None and ds.fine_to_coarse is None


def test_digits_split_is_a_partition_of_the_file_rescaled_to_0_255():
    with np.load(os.path.join(ROOT, "embedded", "digits.npz")) as z:
        images, labels = z["images"], z["labels"]
    expected = np.round(images.astype(np.float64) * 255 / 16).reshape(len(images), -1)
    ds = load_dataset("digits")
    got = torch.cat([ds.x_train, ds.x_test]).reshape(len(images), -1).numpy()
    got_y = torch.cat([ds.y_train, ds.y_test]).numpy()
    rows = lambda a, y: sorted(map(tuple, np.column_stack([a, y]).tolist()))
    assert rows(got, got_y) == rows(expected.astype(np.int64), labels)
    assert int(ds.x_train.max()) == 255


def test_digits_split_is_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)


def test_digits_test_split_is_stratified():
    ds = load_dataset("digits")
    per_class = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10).double()
    share = 500 * per_class / per_class.sum()
    assert ((torch.bincount(ds.y_test, minlength=10) - share).abs() < 1).all()


def test_digits_mean_std_are_the_training_set_statistics():
    ds = load_dataset("digits")
    x = ds.x_train.double() / 255
    assert ds.mean == pytest.approx((x.mean().item(),), abs=1e-12)
    assert ds.std == pytest.approx((x.std(correction=0).item(),), abs=1e-12)


def test_digits_file_matches_the_sha256_in_data_readme():
    with open(os.path.join(ROOT, "embedded", "digits.npz"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(ROOT, "embedded", "README.md")) as f:
        assert digest in f.read()


def test_digits_corrupt_file_raises_dataerror(tmp_path):
    (tmp_path / "digits.npz").write_bytes(b"PK\x03\x04 not really a zip")
    raises_one_line(lambda: load_dataset("digits", tmp_path), "digits.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 17.0])
def test_digits_pixels_outside_0_16_or_not_finite_are_refused_in_one_line(tmp_path, bad):
    """A NaN pixel passed the range check (NaN > 16 is false) and became 0 silently."""
    with np.load(os.path.join(ROOT, "embedded", "digits.npz")) as z:
        images, labels = z["images"].astype(np.float64), z["labels"]
    images[5, 3, 3] = bad
    np.savez(tmp_path / "digits.npz", images=images, labels=labels)
    raises_one_line(lambda: load_dataset("digits", tmp_path), "does not hold images")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_with_their_values(tmp_path, name, gz):
    a = write_idx_dir(tmp_path, gz=gz)
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (12, 1, 6, 7) and ds.x_test.shape == (5, 1, 6, 7)
    assert np.array_equal(ds.x_train[:, 0].numpy(), a["train-images-idx3-ubyte"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), a["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.y_train.numpy(), a["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.y_test.numpy(), a["t10k-labels-idx1-ubyte"])
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10


def test_real_fashion_mnist_loads_60000_train_10000_test():
    # CI installs Debian's dataset-fashion-mnist: its absence is a failure, not a skip.
    assert os.path.isdir(data.DEFAULT_DIRS["fashion-mnist"]), "apt-get install dataset-fashion-mnist"
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.mean == pytest.approx((0.2860,), abs=1e-4) and ds.std == pytest.approx((0.3530,), abs=1e-4)


def test_mnist_without_data_dir_says_how_to_get_it():
    raises_one_line(lambda: load_dataset("mnist"), "--data-dir", "train-images-idx3-ubyte.gz", "http")


def test_missing_data_dir_raises_dataerror(tmp_path):
    raises_one_line(lambda: load_dataset("fashion-mnist", tmp_path / "nope"),
                    "does not exist", "t10k-labels-idx1-ubyte.gz", "dataset-fashion-mnist")


def test_empty_data_dir_raises_dataerror(tmp_path):
    raises_one_line(lambda: load_dataset("mnist", tmp_path), "is empty", "train-images-idx3-ubyte.gz")


def test_missing_idx_file_raises_dataerror(tmp_path):
    write_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    raises_one_line(lambda: load_dataset("mnist", tmp_path), "t10k-labels-idx1-ubyte.gz is missing")


def test_truncated_gz_raises_dataerror(tmp_path):
    write_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    raises_one_line(lambda: load_dataset("mnist", tmp_path), "train-images-idx3-ubyte.gz", "truncated")


def test_bad_idx_magic_raises_dataerror(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    labels = np.zeros(12, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, magic=0x00000803))
    raises_one_line(lambda: load_dataset("mnist", tmp_path), "train-labels-idx1-ubyte", "magic")


@pytest.mark.parametrize("change", ["one byte short", "one byte extra"])
def test_idx_length_disagreeing_with_header_raises_dataerror(tmp_path, change):
    write_idx_dir(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] if change == "one byte short" else raw + b"\0")
    raises_one_line(lambda: load_dataset("fashion-mnist", tmp_path), "t10k-images-idx3-ubyte", "header")


def test_idx_label_count_differing_from_image_count_raises_dataerror(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, dtype=np.uint8)))
    raises_one_line(lambda: load_dataset("mnist", tmp_path), "12 images, 11 labels")


def test_unknown_dataset_raises_dataerror():
    raises_one_line(lambda: load_dataset("svhn"), "'svhn'", "fashion-mnist")


def test_noisy_label_arguments_are_refused_for_other_datasets(tmp_path):
    raises_one_line(lambda: load_dataset("digits", noisy_labels="aggre"), "cifar10n")
    raises_one_line(lambda: load_dataset("cifar10", tmp_path, noisy_labels_file="x.pt"), "cifar10n")


# ---------------------------------------------------------------- CIFAR pickles

@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_pickles_load_channel_major(tmp_path, point_at):
    folder, xs, ys = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path if point_at == "parent" else folder)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    x = np.concatenate(xs[:5])
    # pixel (c, h, w) of a CIFAR row sits at c·1024 + h·32 + w
    n, c, h, w = 7, 2, 5, 30
    assert ds.x_train[n, c, h, w].item() == x[n, c * 1024 + h * 32 + w]
    assert np.array_equal(ds.x_test.reshape(4, -1).numpy(), xs[5])
    assert ds.y_train.tolist() == sum(ys[:5], []) and ds.y_test.tolist() == ys[5]
    assert ds.num_classes == 10 and len(ds.mean) == len(ds.std) == 3


def test_cifar100_loads_fine_coarse_and_fine_to_coarse(tmp_path):
    _, out = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    x, fine = out["train"]
    assert ds.num_classes == 100 and ds.x_train.shape == (8, 3, 32, 32)
    assert np.array_equal(ds.x_train.reshape(8, -1).numpy(), x)
    assert ds.y_train.tolist() == fine.tolist() and ds.y_test.tolist() == out["test"][1].tolist()
    assert ds.coarse_train.tolist() == (fine // 5).tolist()
    assert ds.fine_to_coarse.shape == (100,)
    present = torch.as_tensor(np.unique(fine))
    assert torch.equal(ds.fine_to_coarse[present], present // 5)
    absent = torch.ones(100, dtype=torch.bool)
    absent[present] = False
    assert (ds.fine_to_coarse[absent] == -1).all()


def test_cifar_unpickler_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    folder, _, _ = write_cifar10(tmp_path / "c")
    write_py2_pickle(os.path.join(folder, "data_batch_3"), {b"data": Evil(), b"labels": []})
    raises_one_line(lambda: load_dataset("cifar10", tmp_path / "c"), "data_batch_3", "mkdir is not allowed")
    assert not marker.exists()


def test_truncated_cifar_pickle_raises_dataerror(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    path = os.path.join(folder, "test_batch")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    raises_one_line(lambda: load_dataset("cifar10", tmp_path), "test_batch", "truncated")


def test_cifar_batch_with_wrong_row_length_raises_dataerror(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    write_py2_pickle(os.path.join(folder, "data_batch_1"),
                     {b"data": np.zeros((3, 3000), dtype=np.uint8), b"labels": [0, 1, 2]})
    raises_one_line(lambda: load_dataset("cifar10", tmp_path), "data_batch_1", "(N, 3072)")


def test_missing_cifar_batch_raises_dataerror(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    os.remove(os.path.join(folder, "data_batch_4"))
    raises_one_line(lambda: load_dataset("cifar10", tmp_path), "data_batch_4 is missing", "cifar-10-python.tar.gz")


def test_cifar_n_without_label_file_names_the_flag_and_source(tmp_path):
    write_cifar10(tmp_path)
    raises_one_line(lambda: load_dataset("cifar10n", tmp_path), "--noisy-labels-file", "noisylabels.com")


CIFAR10N_KEYS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3", "clean_label")


def write_cifar_n(path, n, keys, num_classes, seed=0):
    """A CIFAR-N label file (torch.save of a dict of numpy int arrays) of n labels per key."""
    rng = np.random.default_rng(seed)
    labels = {k: rng.integers(0, num_classes, n) for k in keys}
    save_cifar_n(path, labels)
    return labels


@pytest.fixture
def tiny_cifar_n(monkeypatch):
    """noise.load_cifar_n insists on the real 50 000 labels; tiny CIFAR folders
    need that length to be their own, so it is lowered for the test."""
    monkeypatch.setattr(noise, "CIFAR_N_LENGTH", 15)


@pytest.mark.parametrize("which, key", [(None, "aggre_label"), ("worst", "worse_label"), ("rand2", "random_label2")])
def test_cifar10n_takes_human_labels_as_noisy_train(tmp_path, tiny_cifar_n, which, key):
    _, _, ys = write_cifar10(tmp_path)
    labels = write_cifar_n(tmp_path / "CIFAR-10_human.pt", 15, CIFAR10N_KEYS, 10)
    ds = load_dataset("cifar10n", tmp_path, noisy_labels_file=tmp_path / "CIFAR-10_human.pt", noisy_labels=which)
    assert ds.name == "cifar10n" and ds.num_classes == 10 and ds.x_train.shape == (15, 3, 32, 32)
    assert ds.noisy_train.dtype == torch.int64 and ds.noisy_train.tolist() == labels[key].tolist()
    assert ds.y_train.tolist() == sum(ys[:5], [])


def test_cifar100n_defaults_to_noisy100_and_keeps_coarse_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(noise, "CIFAR_N_LENGTH", 8)
    _, out = write_cifar100(tmp_path)
    labels = write_cifar_n(tmp_path / "h.pt", 8, ("noisy_label", "clean_label"), 100)
    ds = load_dataset("cifar100n", tmp_path, noisy_labels_file=tmp_path / "h.pt")
    assert ds.num_classes == 100 and ds.noisy_train.tolist() == labels["noisy_label"].tolist()
    assert ds.coarse_train.tolist() == (out["train"][1] // 5).tolist() and ds.fine_to_coarse is not None


def test_cifar_n_labels_must_match_the_cifar_training_set_size(tmp_path):
    write_cifar10(tmp_path)
    write_cifar_n(tmp_path / "CIFAR-10_human.pt", 50000, CIFAR10N_KEYS, 10)
    raises_one_line(lambda: load_dataset("cifar10n", tmp_path, noisy_labels_file=tmp_path / "CIFAR-10_human.pt"),
                    "50000 labels", "15 training images")


def test_cifar_n_bad_which_or_missing_file_raise_dataerror(tmp_path, tiny_cifar_n):
    write_cifar10(tmp_path)
    write_cifar_n(tmp_path / "h.pt", 15, CIFAR10N_KEYS, 10)
    raises_one_line(lambda: load_dataset("cifar10n", tmp_path, noisy_labels_file=tmp_path / "h.pt",
                                         noisy_labels="noisy100"), "cifar10n", "noisy100")
    raises_one_line(lambda: load_dataset("cifar10n", tmp_path, noisy_labels_file=tmp_path / "nope.pt"),
                    "nope.pt does not exist", "noisylabels.com")


@pytest.mark.parametrize("name", ["cifar10n", "cifar100n"])
@pytest.mark.parametrize("case", ["no data-dir", "no folder", "empty folder", "missing batch", "bad labels"])
def test_cifar_n_image_errors_start_with_the_dataset_asked_for(tmp_path, name, case):
    """cifar10n/cifar100n read the CIFAR-10/100 images; their errors still start with the
    --dataset the user gave, not cifar10/cifar100."""
    base = name[:-1]
    where = {"no data-dir": None, "no folder": tmp_path / "nope"}.get(case, tmp_path)
    if case in ("missing batch", "bad labels"):
        folder = (write_cifar10 if base == "cifar10" else write_cifar100)(tmp_path)[0]
        batch = os.path.join(folder, "data_batch_1" if base == "cifar10" else "train")
        if case == "missing batch":
            os.remove(batch)
        elif base == "cifar10":   # a label outside 0..9
            write_py2_pickle(batch, {b"data": np.zeros((3, 3072), dtype=np.uint8), b"labels": [0, 1, 10]})
        else:                     # fine class 1 in two superclasses
            write_py2_pickle(batch, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"fine_labels": [1, 1],
                                     b"coarse_labels": [0, 3]})
    needle = {"no data-dir": "needs --data-dir", "no folder": "does not exist", "empty folder": "is empty",
              "missing batch": "is missing", "bad labels": "labels outside" if base == "cifar10" else "superclass"}[case]
    msg = raises_one_line(lambda: load_dataset(name, where, noisy_labels_file=tmp_path / "h.pt"), needle)
    assert msg.startswith((f"{name}:", f"{name} ")), msg


# ---------------------------------------------------------------- stratified_subset

label_vectors = st.lists(st.integers(0, 6), min_size=1, max_size=200).map(torch.tensor)


@given(label_vectors, st.integers(0, 250), st.integers(0, 2**31))
def test_stratified_subset_has_exact_size_sorted_unique_in_range(labels, n, seed):
    idx = data.stratified_subset(labels, n, seed)
    assert idx.dtype == torch.int64 and idx.shape == (min(n, len(labels)),)
    assert (idx[1:] > idx[:-1]).all() and (idx >= 0).all() and (idx < len(labels)).all()


@given(label_vectors, st.integers(0, 250), st.integers(0, 2**31))
def test_stratified_subset_class_counts_are_within_one_of_proportional(labels, n, seed):
    idx = data.stratified_subset(labels, n, seed)
    counts = torch.bincount(labels, minlength=7).double()
    share = min(n, len(labels)) * counts / counts.sum()
    assert ((torch.bincount(labels[idx], minlength=7) - share).abs() < 1).all()


def test_stratified_subset_gives_remainders_to_largest_then_lowest_class():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    # shares 2.5, 1.5, 1.0: floors 2, 1, 1; one left, classes 0 and 1 tie at .5 -> class 0
    assert torch.bincount(labels[data.stratified_subset(labels, 5, 0)]).tolist() == [3, 1, 1]
    # shares 3.5, 2.1, 1.4: floors 3, 2, 1; one left -> class 0 (.5 beats .4, .1)
    assert torch.bincount(labels[data.stratified_subset(labels, 7, 0)]).tolist() == [4, 2, 1]


def test_stratified_subset_is_deterministic_per_seed_and_varies_with_it():
    labels = torch.arange(1000) % 10
    a, b = data.stratified_subset(labels, 100, 3), data.stratified_subset(labels, 100, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, data.stratified_subset(labels, 100, 4))


def test_stratified_subset_of_n_at_least_len_returns_everything():
    labels = torch.tensor([3, 1, 3, 0])
    assert data.stratified_subset(labels, 4, 0).tolist() == [0, 1, 2, 3]
    assert data.stratified_subset(labels, 10, 0).tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- to_float, default_augment

def test_to_float_normalises_each_channel():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = data.to_float(x, mean, std)
    assert y.dtype == torch.float32 and y.shape == x.shape
    for c in range(3):
        assert torch.allclose(y[:, c].double(), (x[:, c].double() / 255 - mean[c]) / std[c], atol=1e-6)


def test_default_augment_is_crop_flip_for_cifar_only():
    assert {n: data.default_augment(n) for n in data.DATASETS} == {
        "digits": "none", "mnist": "none", "fashion-mnist": "none", "cifar10": "crop-flip",
        "cifar100": "crop-flip", "cifar10n": "crop-flip", "cifar100n": "crop-flip"}


# ---------------------------------------------------------------- augment_batch

def distinct_batch(B=6, C=2, H=5, W=4):
    """A batch whose every value is different, so a crop identifies its offset."""
    return torch.arange(1, B * C * H * W + 1, dtype=torch.float32).reshape(B, C, H, W)


def crop_offsets(out, x, pad, mode="zeros", flipped=False):
    """For each sample, the set of (dy, dx) whose crop of padded x equals out (flipped if asked)."""
    xp = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else mode)
    H, W = x.shape[2:]
    target = out.flip(3) if flipped else out
    return [{(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
             if torch.equal(xp[b, :, dy:dy + H, dx:dx + W], target[b])} for b in range(len(x))]


def test_augment_keeps_shape_dtype_and_device():
    x = distinct_batch()
    out = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_augment_is_deterministic_given_the_generator():
    x = distinct_batch(B=32)
    a = data.augment_batch(x, torch.Generator().manual_seed(5), pad=2)
    b = data.augment_batch(x, torch.Generator().manual_seed(5), pad=2)
    c = data.augment_batch(x, torch.Generator().manual_seed(6), pad=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_with_no_pad_and_no_flip_is_identity():
    x = distinct_batch()
    assert torch.equal(data.augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


@settings(max_examples=20)
@given(st.integers(1, 3), st.sampled_from(["zeros", "reflect"]), st.integers(0, 1000))
def test_augment_outputs_are_crops_of_the_padded_input(pad, mode, seed):
    x = distinct_batch()
    out = data.augment_batch(x, torch.Generator().manual_seed(seed), pad=pad, flip=False, padding_mode=mode)
    assert all(crop_offsets(out, x, pad, mode))


def test_augment_crop_offsets_cover_every_position():
    x = distinct_batch(B=300, C=1, H=4, W=4)
    out = data.augment_batch(x, torch.Generator().manual_seed(1), pad=1, flip=False)
    seen = set().union(*crop_offsets(out, x, 1))
    assert seen == {(dy, dx) for dy in range(3) for dx in range(3)}


def test_augment_flip_mirrors_about_half_of_the_samples():
    x = distinct_batch(B=400, C=1, H=3, W=3)
    out = data.augment_batch(x, torch.Generator().manual_seed(2), pad=0, flip=True)
    mirrored = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (mirrored ^ kept).all()
    assert 150 < int(mirrored.sum()) < 250


def test_augment_with_flip_outputs_crops_or_mirrored_crops():
    x = distinct_batch(B=40)
    out = data.augment_batch(x, torch.Generator().manual_seed(3), pad=2, flip=True)
    plain, mirrored = crop_offsets(out, x, 2), crop_offsets(out, x, 2, flipped=True)
    assert all(p or m for p, m in zip(plain, mirrored)) and any(mirrored) and any(plain)


def test_augment_rejects_negative_pad_and_unknown_mode():
    with pytest.raises(ValueError, match="pad"):
        data.augment_batch(distinct_batch(), torch.Generator(), pad=-1)
    with pytest.raises(ValueError, match="padding_mode"):
        data.augment_batch(distinct_batch(), torch.Generator(), padding_mode="edge")


def test_limit_test_is_one_stratified_subset_shared_by_every_seed():
    """--limit-test N: N test samples, every class within 1 of its share, and the same
    samples whatever --seed is (runs of a grid are scored on one test set)."""
    import train
    def test_set(*flags):
        a = train.build_parser().parse_args(["--limit-train", "300", *flags])
        d = data.prepare_training_data(data.DataConfig.from_config(vars(a)), torch.device("cpu"))
        return d.x_test, d.y_test
    x_all, y_all = test_set()
    x0, y0 = test_set("--limit-test", "100", "--seed", "0")
    x1, y1 = test_set("--limit-test", "100", "--seed", "7")
    assert len(y0) == 100 and torch.equal(x0, x1) and torch.equal(y0, y1)
    share = torch.bincount(y_all, minlength=10).double() * 100 / len(y_all)
    assert ((torch.bincount(y0, minlength=10) - share).abs() < 1).all()
    rows = {tuple(r.flatten().tolist()) for r in x_all}
    assert all(tuple(r.flatten().tolist()) in rows for r in x0)   # a subset of the test set, not the train set
    x_big, _ = test_set("--limit-test", str(len(y_all) + 5))
    assert torch.equal(x_big, x_all)


# ---------------------------------------------------------------- TrainData (prepare_training_data)

def _cfg(**flags):
    """A DataConfig of train.py's defaults with `flags` (dests) changed."""
    import train
    a = train.build_parser().parse_args([])
    for k, v in flags.items():
        setattr(a, k, v)
    return data.DataConfig.from_config(vars(a))


@pytest.mark.parametrize("val_frac", [0.0, 0.2])
def test_prepare_training_data_gives_a_traindata_of_consistent_shapes(val_frac):
    cfg = _cfg(limit_train=300, val_frac=val_frac, noise_rate=0.4)
    d = data.prepare_training_data(cfg, torch.device("cpu"))
    assert isinstance(d, data.TrainData) and d.config == cfg
    n = len(d.y)
    assert d.x.shape == (n, *d.in_shape) and d.x.dtype == torch.uint8 and d.in_shape == (1, 8, 8)
    assert d.y_noisy.shape == d.ids.shape == (n,) and d.x_test.shape[1:] == d.in_shape
    assert d.y_test.shape == (len(d.x_test),) and d.C == 10
    assert int(d.y.max()) < d.C and int(d.y_noisy.max()) < d.C and int(d.y_test.max()) < d.C
    assert torch.equal(d.ids, torch.arange(n)) and d.n_ids == n     # ELR memory rows, no pool
    assert d.pool is None and d.subset_epoch == 1 and d.clean_known and d.clean_val is None and d.aug == "none"
    if val_frac:
        assert len(d.val[1]) == round(val_frac * 300) and n + len(d.val[1]) == 300 and d.val[0].shape[1:] == d.in_shape
    else:
        assert d.val is None and n == 300
        assert d.report["rate"] == pytest.approx(float((d.y_noisy != d.y).float().mean()))   # the realised rate


def test_redraw_subset_replaces_the_training_rows_in_place(monkeypatch):
    """--samples-per-epoch: the same TrainData object gets epoch's subset (x, y, y_noisy = y, ids)."""
    d = data.prepare_training_data(_cfg(limit_train=100), torch.device("cpu"))
    d.pool, calls = ("paths", torch.arange(40)), []
    x, y, ids = torch.zeros(6, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6) * 3

    def draw(pool, n, seed, epoch, size, workers):
        calls.append((pool, epoch))
        return x, y, ids
    monkeypatch.setattr(data.realworld, "draw_train_subset", draw)
    same = d
    data.redraw_subset(d, 4)
    assert d is same and calls == [(d.pool, 4)] and d.subset_epoch == 4
    assert torch.equal(d.x, x) and torch.equal(d.y, y) and torch.equal(d.y_noisy, y) and torch.equal(d.ids, ids)
    assert len(d.x_test) == 500                                          # the test set stays


def test_data_config_from_config_takes_its_fields_from_a_runs_flags():
    import train_cli
    flags = dict(train_cli.defaults(), noise_rate=0.2, extra_flag="ignored")
    cfg = data.DataConfig.from_config(flags)
    assert cfg.noise_rate == 0.2 and cfg.dataset == "digits" and set(cfg._asdict()) == set(data.DataConfig._fields)
