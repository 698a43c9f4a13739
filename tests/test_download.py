"""Tests for download.py (train.py --download) without the internet: a loopback HTTP server
(127.0.0.1, started and stopped by each test) serves tiny files in the real formats (the IDX
and CIFAR writers of test_data.py), and the checksum table is patched to theirs. A download
is verified before it gets its final name, resumes with an HTTP Range request, and every
failure is one line that leaves nothing under the final name."""
import errno
import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest

import data
import download
import noise
from conftest import ROOT, one_line, run_in, save_cifar_n
from test_data import write_cifar10, write_idx_dir

IDX = [s + ".gz" for s in data.IDX_FILES]


# ----------------------------------------------------------------------------- The loopback server

class Server(http.server.ThreadingHTTPServer):
    """Serves `files` {name: bytes} at /name on 127.0.0.1, with Range support. Knobs: cut {name:
    n} sends only n body bytes once, then drops the connection; ignore_range answers 200 with
    everything; delay seconds per 4 kB; stall seconds before the body; the body waits while `gate`
    is clear (at most 30 s). Records `requests`
    (name, Range header) and `sent` {name: body bytes sent}."""
    daemon_threads = True

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.cut, self.ignore_range, self.delay, self.stall = dict(files), {}, False, 0.0, 0.0
        self.requests, self.sent, self.lock, self.gate = [], {}, threading.Lock(), threading.Event()
        self.gate.set()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10   # a stuck client cannot hold a handler thread longer

    def do_GET(self):
        srv, name, rng = self.server, self.path.lstrip("/"), self.headers.get("Range")
        with srv.lock:
            srv.requests.append((name, rng))
        body = srv.files.get(name)
        if body is None:
            return self.send_error(404)
        start = int(rng.split("=")[1].split("-")[0]) if rng and not srv.ignore_range else 0
        if start >= len(body) and rng and not srv.ignore_range:
            return self.send_error(416)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        time.sleep(srv.stall)
        srv.gate.wait(30)
        with srv.lock:
            cut = srv.cut.pop(name, None)
        payload = body[start:] if cut is None else body[start:start + cut]
        for i in range(0, len(payload), 4096):
            self.wfile.write(payload[i:i + 4096])
            with srv.lock:
                srv.sent[name] = srv.sent.get(name, 0) + len(payload[i:i + 4096])
            time.sleep(srv.delay)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(files) -> a running Server; every server is stopped at the end of the test."""
    servers = []

    def start(files):
        servers.append(Server(files))
        return servers[-1]
    yield start
    for s in servers:
        s.stop()


# ----------------------------------------------------------------------------- Fixtures in the real formats

def md5(blob):
    return hashlib.md5(blob).hexdigest()


def idx_files(tmp_path, **kw):
    """{name: bytes} of the four IDX .gz files and their arrays."""
    src = tmp_path / "src"
    arrays = write_idx_dir(src, **kw)
    return {n: (src / n).read_bytes() for n in IDX}, arrays


def patch_idx(monkeypatch, name, files, urls=(), content=False):
    """SOURCES[name] := the fixture files, at urls (base URLs), with their md5 (and content sha256)."""
    remotes = tuple(download.Remote(n, tuple(u + "/" + n for u in urls), md5=md5(b),
                                    content_sha256=hashlib.sha256(gzip.decompress(b)).hexdigest() if content else None)
                    for n, b in files.items())
    monkeypatch.setitem(download.SOURCES, name, remotes)


def cifar_archive(tmp_path, members=None):
    """cifar-10-python.tar.gz of a tiny cifar-10-batches-py (or of `members`: [(name, bytes)])."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if members is None:
            folder = write_cifar10(tmp_path / "src")[0]
            tar.add(folder, arcname="cifar-10-batches-py")
        for name, blob in members or ():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def patch_cifar(monkeypatch, archive, urls=()):
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {os.path.basename(m.name): md5(tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}
    monkeypatch.setitem(download.SOURCES, "cifar10", (download.Remote(
        "cifar-10-python.tar.gz", tuple(u + "/cifar-10-python.tar.gz" for u in urls), md5=md5(archive)),))
    monkeypatch.setitem(download.UNPACKED, "cifar10", ("cifar-10-batches-py",
                                                       {f: members.get(f, "0") for f in data.CIFAR_FILES["cifar10"]}))


def names(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def load_error(*args, **kw):
    with pytest.raises(data.DataError) as e:
        data.load_dataset(*args, **kw)
    return one_line(str(e.value))


# ----------------------------------------------------------------------------- Good downloads

def test_download_fetches_verifies_and_loads_mnist_from_a_mirror(tmp_path, serve, monkeypatch, capfd):
    files, arrays = idx_files(tmp_path)
    srv = serve(files)
    patch_idx(monkeypatch, "mnist", files, urls=("http://127.0.0.1:9",))   # with --mirror it is never asked
    ds = data.load_dataset("mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert names(tmp_path / "d") == sorted(IDX + [download.LOCK])       # no .part left
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all("md5 verified" in line and srv.url in line for line in lines)   # one line per file


def test_download_uses_the_official_urls_in_order_and_skips_a_failing_one(tmp_path, serve, monkeypatch):
    files, _ = idx_files(tmp_path)
    srv = serve(files)
    patch_idx(monkeypatch, "mnist", files, urls=(srv.url + "/gone", srv.url))   # the first answers 404
    data.load_dataset("mnist", tmp_path / "d", download=True)
    assert all(os.path.isfile(tmp_path / "d" / n) for n in IDX)
    assert [r[0] for r in srv.requests].count(IDX[0]) == 1


def test_a_complete_folder_is_verified_and_not_fetched_again(tmp_path, serve, monkeypatch):
    files, _ = idx_files(tmp_path)
    srv = serve(files)
    patch_idx(monkeypatch, "mnist", files)
    data.load_dataset("mnist", tmp_path / "d", download=True, mirror=srv.url)
    asked = len(srv.requests)
    data.load_dataset("mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert len(srv.requests) == asked


def test_a_recompressed_fashion_mnist_passes_by_its_content_hash(tmp_path, serve, monkeypatch, capfd):
    """Debian's dataset-fashion-mnist recompresses the upstream .gz files: other md5s, same IDX bytes."""
    files, arrays = idx_files(tmp_path)
    patch_idx(monkeypatch, "fashion-mnist", files, content=True)
    again = {n: gzip.compress(gzip.decompress(b), compresslevel=1, mtime=1) for n, b in files.items()}
    assert all(md5(again[n]) != md5(files[n]) for n in IDX)
    srv = serve(again)
    ds = data.load_dataset("fashion-mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert capfd.readouterr().err.count("sha256 of the decompressed bytes verified") == 4


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_archive_is_verified_unpacked_and_loaded(tmp_path, serve, monkeypatch, point_at):
    archive = cifar_archive(tmp_path)
    srv = serve({"cifar-10-python.tar.gz": archive})
    patch_cifar(monkeypatch, archive, urls=(srv.url,))
    where = tmp_path / "d" / ("cifar-10-batches-py" if point_at == "folder" else "")
    ds = data.load_dataset("cifar10", where, download=True)
    assert ds.x_train.shape == (15, 3, 32, 32)
    assert names(tmp_path / "d") == sorted([download.LOCK, "cifar-10-batches-py", "cifar-10-python.tar.gz"])


def test_cifar10n_labels_are_fetched_next_to_the_cifar_folder(tmp_path, serve, monkeypatch):
    monkeypatch.setattr(noise, "CIFAR_N_LENGTH", 15)
    archive = cifar_archive(tmp_path)
    save_cifar_n(tmp_path / "h.pt", {k: np.arange(15) % 10 for k in
                                     ("aggre_label", "worse_label", "random_label1", "random_label2",
                                      "random_label3", "clean_label")})
    labels = (tmp_path / "h.pt").read_bytes()
    srv = serve({"cifar-10-python.tar.gz": archive, "CIFAR-10_human.pt": labels})
    patch_cifar(monkeypatch, archive)
    monkeypatch.setitem(download.SOURCES, "cifar10n", (download.Remote(
        "CIFAR-10_human.pt", (), sha256=hashlib.sha256(labels).hexdigest(), size=len(labels)),))
    ds = data.load_dataset("cifar10n", tmp_path / "d", download=True, mirror=srv.url)
    assert ds.noisy_train.tolist() == (np.arange(15) % 10).tolist()
    assert os.path.isfile(tmp_path / "d" / "CIFAR-10_human.pt")
    ds = data.load_dataset("cifar10n", tmp_path / "d")   # later runs find it without --noisy-labels-file
    assert ds.noisy_train is not None


def test_default_folder_is_dcm_data_then_data_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    assert data.default_folder("cifar10") == os.path.join("data", "cifar10")
    assert data.data_folders("fashion-mnist") == [os.path.join("data", "fashion-mnist"), data.DEFAULT_DIRS["fashion-mnist"]]
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_folders("mnist") == [str(tmp_path / "mnist")]
    write_idx_dir(tmp_path / "mnist")
    assert len(data.load_dataset("mnist").y_train) == 12


def test_a_torchvision_root_is_read_as_it_is(tmp_path):
    write_idx_dir(tmp_path / "FashionMNIST" / "raw")
    assert len(data.load_dataset("fashion-mnist", tmp_path).y_train) == 12


# ----------------------------------------------------------------------------- Failures: one line, nothing under the final name

def test_a_corrupted_file_is_one_line_and_leaves_nothing(tmp_path, serve, monkeypatch):
    files, _ = idx_files(tmp_path)
    bad = dict(files, **{IDX[1]: files[IDX[1]][:-8] + b"\0" * 8})
    srv = serve(bad)
    patch_idx(monkeypatch, "mnist", files)
    msg = load_error("mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert IDX[1] in msg and f"{srv.url}/{IDX[1]}" in msg and "md5" in msg and "rerun with --download" in msg
    assert not any(n.startswith(IDX[1]) for n in names(tmp_path / "d"))   # neither the final name nor a .part


def test_a_fake_cifar_archive_is_one_line_and_leaves_nothing(tmp_path, serve, monkeypatch):
    archive = cifar_archive(tmp_path)
    srv = serve({"cifar-10-python.tar.gz": cifar_archive(tmp_path / "other", [("cifar-10-batches-py/x", b"x")])})
    patch_cifar(monkeypatch, archive)
    msg = load_error("cifar10", tmp_path / "d", download=True, mirror=srv.url)
    assert "cifar-10-python.tar.gz" in msg and "not the published file" in msg
    assert names(tmp_path / "d") == [download.LOCK]


def test_a_present_file_that_does_not_match_is_refused_and_kept(tmp_path, monkeypatch):
    files, _ = idx_files(tmp_path)
    patch_idx(monkeypatch, "mnist", files)
    write_idx_dir(tmp_path / "d", seed=1)   # the user's own files: other bytes
    before = (tmp_path / "d" / IDX[0]).read_bytes()
    msg = load_error("mnist", tmp_path / "d", download=True)
    assert IDX[0] in msg and "delete it" in msg and (tmp_path / "d" / IDX[0]).read_bytes() == before


def test_404_is_one_line_naming_file_and_url(tmp_path, serve, monkeypatch):
    files, _ = idx_files(tmp_path)
    srv = serve({})
    patch_idx(monkeypatch, "mnist", files)
    msg = load_error("mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert f"{srv.url}/{IDX[0]}" in msg and "HTTP 404" in msg and "--mirror" in msg
    assert names(tmp_path / "d") == [download.LOCK]


def test_a_refused_connection_is_one_line(tmp_path, monkeypatch):
    files, _ = idx_files(tmp_path)
    patch_idx(monkeypatch, "mnist", files)
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = load_error("mnist", tmp_path / "d", download=True, mirror=f"http://127.0.0.1:{port}")
    assert "Connection refused" in msg and IDX[0] in msg and f"127.0.0.1:{port}/{IDX[0]}" in msg


def test_a_timeout_is_one_line(tmp_path, serve, monkeypatch):
    files, _ = idx_files(tmp_path)
    srv = serve(files)
    srv.stall = 1.0
    patch_idx(monkeypatch, "mnist", files)
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    msg = load_error("mnist", tmp_path / "d", download=True, mirror=srv.url)
    assert "timed out" in msg and IDX[0] in msg
    assert not os.path.exists(tmp_path / "d" / IDX[0])


def big_file(tmp_path, monkeypatch, n=400_000):
    """A CIFAR-N-like label file of n random bytes with its size and sha256 in SOURCES -> bytes."""
    blob = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    monkeypatch.setitem(download.SOURCES, "cifar10n", (download.Remote(
        "CIFAR-10_human.pt", (), sha256=hashlib.sha256(blob).hexdigest(), size=n),))
    return blob


def cut_transfer(tmp_path, serve, monkeypatch, at):
    """A served CIFAR-10N-sized file whose first transfer the server cuts after `at` bytes, and
    that first try. -> (the file's bytes, the server, the destination path, its DownloadError)."""
    blob = big_file(tmp_path, monkeypatch)
    srv = serve({"CIFAR-10_human.pt": blob})
    srv.cut["CIFAR-10_human.pt"] = at
    dest = str(tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(download.DownloadError) as e:
        download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    return blob, srv, dest, e.value


def test_a_cut_transfer_is_resumed_with_a_range_request(tmp_path, serve, monkeypatch):
    blob, srv, dest, err = cut_transfer(tmp_path, serve, monkeypatch, 100_000)
    assert "continue from byte 100000" in one_line(str(err)) and not os.path.exists(dest)
    assert os.path.getsize(dest + download.PART) == 100_000
    download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    assert srv.requests == [("CIFAR-10_human.pt", None), ("CIFAR-10_human.pt", "bytes=100000-")]
    assert srv.sent["CIFAR-10_human.pt"] == len(blob)      # the second request sent only the rest
    assert open(dest, "rb").read() == blob and not os.path.exists(dest + download.PART)


def test_a_whole_part_left_by_a_killed_run_is_verified_and_placed(tmp_path, serve, monkeypatch):
    """Killed after the last byte, before the rename: the next run asks for the rest (416: none)."""
    blob = big_file(tmp_path, monkeypatch)
    srv = serve({"CIFAR-10_human.pt": blob})
    dest = str(tmp_path / "CIFAR-10_human.pt")
    with open(dest + download.PART, "wb") as f:
        f.write(blob)
    download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    assert srv.requests == [("CIFAR-10_human.pt", f"bytes={len(blob)}-")] and open(dest, "rb").read() == blob


def test_a_server_ignoring_range_restarts_the_file(tmp_path, serve, monkeypatch):
    blob = big_file(tmp_path, monkeypatch)
    srv = serve({"CIFAR-10_human.pt": blob})
    srv.ignore_range = True
    dest = str(tmp_path / "CIFAR-10_human.pt")
    with open(dest + download.PART, "wb") as f:
        f.write(b"\xff" * 1000)   # not the file's first bytes: appending the 200 body would corrupt it
    download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    assert open(dest, "rb").read() == blob


def test_server_gone_mid_transfer_is_one_line_and_keeps_no_final_file(tmp_path, serve, monkeypatch):
    _, srv, dest, err = cut_transfer(tmp_path, serve, monkeypatch, 50_000)
    srv.stop()
    assert "closed after 50000 of 400000 bytes" in one_line(str(err))
    with pytest.raises(download.DownloadError) as e:
        download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    assert "Connection refused" in one_line(str(e.value)) and "continue from byte 50000" in str(e.value)
    assert not os.path.exists(dest)


def test_a_full_disk_is_one_line_and_keeps_no_final_file(tmp_path, serve, monkeypatch):
    blob = big_file(tmp_path, monkeypatch)
    srv = serve({"CIFAR-10_human.pt": blob})
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > 200_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()
    monkeypatch.setattr(download, "open", lambda p, mode="r", **kw: Full(real_open(p, mode, **kw)) if "w" in mode
                        else real_open(p, mode, **kw), raising=False)
    dest = str(tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(download.DownloadError) as e:
        download.ensure_file(download.SOURCES["cifar10n"][0], dest, srv.url)
    msg = one_line(str(e.value))
    assert "No space left on device" in msg and "free space" in msg and dest + download.PART in msg
    assert not os.path.exists(dest)


CONCURRENT = """
import json, sys
sys.path.insert(0, {root!r})
import download
spec = json.loads(sys.argv[1])
download.SOURCES["mnist"] = tuple(download.Remote(n, (), md5=m) for n, m in spec["md5"].items())
download.ensure("mnist", spec["folder"], spec["mirror"])
"""


def until(done, what, timeout=60):
    t0 = time.monotonic()
    while not done():
        assert time.monotonic() - t0 < timeout, f"no {what} in {timeout} s"
        time.sleep(0.02)


def test_concurrent_downloads_both_end_with_verified_files(tmp_path, serve):
    """Two processes fetch the same dataset into one folder at once: the second starts while the
    first is mid-transfer, waits for its lock and then finds verified files; each file crosses
    the network once."""
    files, _ = idx_files(tmp_path, n_train=600, hw=(28, 28))   # random pixels: ~470 kB that gzip cannot shrink
    srv = serve(files)
    srv.gate.clear()   # the first transfer is held until the second process is running
    spec = json.dumps({"md5": {n: md5(b) for n, b in files.items()}, "folder": str(tmp_path / "d"), "mirror": srv.url})
    start = lambda: subprocess.Popen([sys.executable, "-c", CONCURRENT.format(root=ROOT), spec],
                                     stderr=subprocess.PIPE, text=True)
    first = start()
    until(lambda: srv.requests, "first request")
    second, said = start(), []
    threading.Thread(target=lambda: said.extend(second.stderr), daemon=True).start()
    until(lambda: said or len(srv.requests) > 1, "sign of the second process")   # it waits, or (unlocked) asks too
    srv.gate.set()
    errs = [first.communicate(timeout=120)[1], second.wait(timeout=120)]
    assert [first.returncode, second.returncode] == [0, 0], (errs, said)
    assert all((tmp_path / "d" / n).read_bytes() == b for n, b in files.items())
    assert srv.sent == {n: len(b) for n, b in files.items()}
    assert "waiting for another process downloading into" in said[0]


@pytest.mark.parametrize("member", ["cifar-10-batches-py/../evil", "../evil", "/tmp/evil", "link"])
def test_an_unsafe_tar_member_is_refused_and_nothing_is_unpacked(tmp_path, serve, monkeypatch, member):
    members = [("cifar-10-batches-py/data_batch_1", b"x")]
    if member == "link":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("cifar-10-batches-py/data_batch_2")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        archive = buf.getvalue()
    else:
        archive = cifar_archive(tmp_path, members + [(member, b"evil")])
    srv = serve({"cifar-10-python.tar.gz": archive})
    patch_cifar(monkeypatch, archive)   # its checksum passes: the unpacking must refuse it
    msg = load_error("cifar10", tmp_path / "d", download=True, mirror=srv.url)
    assert "cifar-10-python.tar.gz holds" in msg and "nothing was unpacked" in msg
    assert "cifar-10-batches-py" not in names(tmp_path / "d") and not os.path.exists(tmp_path / "evil")
    assert not [n for n in names(tmp_path / "d") if n.startswith(".cifar")]   # no temp folder left


# ----------------------------------------------------------------------------- Progress, flags, the table

def test_progress_on_a_terminal_shows_bytes_rate_and_eta(tmp_path, serve, monkeypatch):
    blob = big_file(tmp_path, monkeypatch)
    srv = serve({"CIFAR-10_human.pt": blob})
    srv.delay = 0.01

    class Tty(io.StringIO):
        def isatty(self):
            return True
    log = Tty()
    download.ensure_file(download.SOURCES["cifar10n"][0], str(tmp_path / "f.pt"), srv.url, log)
    text = log.getvalue()
    assert "\r" in text and "ETA" in text and "/s" in text and "kB" in text
    assert text.rstrip().splitlines()[-1].count("sha256 verified") == 1


def test_without_download_a_missing_dataset_ends_with_add_download(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    for name in ("mnist", "cifar10", "cifar100"):
        assert load_error(name).endswith("or add --download")
    assert load_error("fashion-mnist", tmp_path / "nope").endswith("or add --download")


def test_download_flag_mistakes_are_one_line(tmp_path, capsys):
    rc, _, err = run_in(capsys, "--mirror", "http://127.0.0.1:1", "--out", str(tmp_path / "r"))
    assert rc == 2 and "--mirror needs --download" in one_line(err)
    rc, _, err = run_in(capsys, "--dataset", "clothing1m", "--noise", "none", "--download", "--out", str(tmp_path / "r"))
    assert rc == 2 and "needs registration" in one_line(err) and "Cysu/noisy_label" in err
    rc, _, err = run_in(capsys, "--download", "--mirror", "ftp://x", "--out", str(tmp_path / "r"))
    assert rc == 2 and "http://" in one_line(err)


def test_train_py_trains_on_data_it_downloaded_and_stops_in_one_line_on_a_bad_file(tmp_path, serve, monkeypatch, capsys):
    files, _ = idx_files(tmp_path, n_train=40, n_test=20)
    srv = serve(files)
    patch_idx(monkeypatch, "mnist", files)
    run = ["--dataset", "mnist", "--epochs", "1", "--batch-size", "8", "--download", "--mirror", srv.url]
    rc, out, err = run_in(capsys, *run, "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "r"))
    assert rc == 0 and "done: test accuracy" in out and err.count("md5 verified") == 4, err
    srv.files[IDX[2]] = b"not gzip"
    rc, _, err = run_in(capsys, *run, "--data-dir", str(tmp_path / "e"), "--out", str(tmp_path / "r2"))
    assert rc == 2 and "train.py: error: mnist: t10k-images-idx3-ubyte.gz from" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and not os.path.exists(tmp_path / "e" / IDX[2])


def test_the_table_has_a_checksum_for_every_file_and_the_loaders_names():
    for name in data.DOWNLOADABLE:
        for r in download.SOURCES[name]:
            assert (r.md5 or r.sha256) and r.urls and all(u.endswith("/" + r.name) for u in r.urls)
    for name in ("mnist", "fashion-mnist"):
        assert [r.name for r in download.SOURCES[name]] == IDX
    for name, (inner, members) in download.UNPACKED.items():
        assert inner == data.CIFAR_FOLDERS[name] and tuple(members) == data.CIFAR_FILES[name]
    assert [r.name for r in download.SOURCES["cifar10n"] + download.SOURCES["cifar100n"]] == list(data.CIFAR_N_FILES.values())


def test_debian_fashion_mnist_matches_the_content_hashes():
    """The content sha256s were computed from this copy; both it and upstream's .gz pass."""
    for r in download.SOURCES["fashion-mnist"]:
        path = os.path.join(data.DEFAULT_DIRS["fashion-mnist"], r.name)
        assert download.verify(path, r) == (True, "sha256 of the decompressed bytes")


def test_without_a_terminal_a_long_download_logs_a_progress_line_every_30_seconds(monkeypatch):
    """A job's log file gets a full line (bytes, total, rate, ETA) every PROGRESS_LINE_EVERY_S
    seconds, not the terminal's carriage-return redraws and not silence until the end."""
    clock = [100.0]
    monkeypatch.setattr(download.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    show = download._Progress("cifar-10-python.tar.gz", 0, 170_000_000, log)
    for t, done in ((10, 10_000_000), (31, 31_000_000), (40, 40_000_000), (62, 62_000_000)):
        clock[0] = 100.0 + t
        show.update(done)
    show.close()
    lines = log.getvalue().splitlines()
    assert lines == ["download: cifar-10-python.tar.gz: 31.0 MB / 170.0 MB at 1.0 MB/s, ETA 139 s",
                     "download: cifar-10-python.tar.gz: 62.0 MB / 170.0 MB at 1.0 MB/s, ETA 108 s"]
    assert "\r" not in log.getvalue()
