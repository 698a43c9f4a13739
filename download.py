"""train.py --download: fetch, verify and unpack the datasets of the paper's benchmarks.

Not a part of DCM (Zhang et al., arXiv 2508.09697): the data its experiments train on
(docs/design.md §6), laid out as torchvision lays it out (the four IDX .gz files;
cifar-10-python.tar.gz next to cifar-10-batches-py/), so a torchvision folder is used as
it is. data.py calls it where it resolves a dataset's folder; nothing else does.

    download.ensure("cifar10", "data/cifar10")              # fetch what is missing, verify all
    download.ensure("fashion-mnist", "data/fashion-mnist", mirror="http://10.0.0.5/fmnist")
    download.ensure_file(download.SOURCES["cifar10n"][0], "data/cifar10/CIFAR-10_human.pt")

What is verified (each checksum's source: docs/design.md §6):
- a downloaded file gets its final name only after it matched its published checksum: the
  md5 of each MNIST .gz and of the CIFAR archives; for Fashion-MNIST the md5 of the upstream
  .gz OR the sha256 of its decompressed IDX bytes (Debian's dataset-fashion-mnist recompresses
  the same bytes, so both pass); size and sha256 of the CIFAR-N label files;
- files already present are verified the same way when --download is given (an unpacked
  CIFAR folder by the published md5 of each batch; an uncompressed MNIST IDX file has no
  published checksum and is used as it is). Without --download nothing is hashed: the loaders
  check each file's format (IDX magic and lengths, CIFAR shapes and labels), as before.

Nothing half-written: bytes go to NAME.part (continued by the next run with an HTTP Range
request), which is verified, fsynced and renamed; one process at a time fetches into a folder
(flock on .download.lock), so a concurrent run waits and then finds verified files. Every
problem is a DownloadError whose message is one line naming the file, the URL and what to do.
"""
import fcntl
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from typing import NamedTuple, Optional

TIMEOUT_S = 60          # seconds without a byte (connect or read) before a transfer counts as lost
CHUNK = 1 << 16         # bytes read per step
PART = ".part"          # NAME.part: the bytes fetched so far, never used before verification
LOCK = ".download.lock"
AGENT = "dcm-ref-download/1"


class DownloadError(ValueError):
    """A dataset that cannot be fetched, verified or unpacked; the message is one line."""


class Remote(NamedTuple):
    """One published file. name: its file name (also its name under --mirror URL/); urls: the
    official addresses, tried in order; md5, sha256 (hex) and size (bytes) of the file as
    served; content_sha256: sha256 of its gunzipped bytes (any gzip compression of them passes).
    None where nothing is published; every Remote has md5 or sha256."""
    name: str
    urls: tuple
    md5: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    content_sha256: Optional[str] = None


def _idx(bases, md5s, contents=(None,) * 4):
    """The four IDX .gz files served under each base URL, with their md5s (and content sha256s)."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return tuple(Remote(f"{s}.gz", tuple(b + s + ".gz" for b in bases), md5=m, content_sha256=c)
                 for s, m, c in zip(stems, md5s, contents))


_CIFAR_N = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/"
SOURCES = {   # dataset -> its published files; sources of the checksums: docs/design.md §6
    "mnist": _idx(("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"),
                  ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                   "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx(("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                           "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
                          ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                           "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                          ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                           "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                           "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                           "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
    "cifar10": (Remote("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                       md5="c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (Remote("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                        md5="eb9058c3a382ffc7106e4002c42a8d85"),),
    "cifar10n": (Remote("CIFAR-10_human.pt", (_CIFAR_N + "CIFAR-10_human.pt",), size=2401007,
                        sha256="873e69c39cb9b5e97fb6bae2d60bb59b38a5cbc31d2b868f7903dcb2b9dd2310"),),
    "cifar100n": (Remote("CIFAR-100_human.pt", (_CIFAR_N + "CIFAR-100_human.pt",), size=1000959,
                         sha256="bd2d80409754d420292d622e15e25248ba21e37d27429efac49c8da723f44394"),),
}
# The archives' folders and the published md5 of each batch in them (to verify an unpacked folder).
UNPACKED = {
    "cifar10": ("cifar-10-batches-py", {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                                        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                                        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                                        "data_batch_4": "634d18415352ddfa80567beed471001a",
                                        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                                        "test_batch": "40351d587109b95175f43aff81a1287e"}),
    "cifar100": ("cifar-100-python", {"train": "16019d7e3df5f24257cddd939b257f8d",
                                      "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
}


# ----------------------------------------------------------------------------- A dataset's folder

def ensure(name, folder, mirror=None, log=None):
    """Make `folder` hold dataset `name` (mnist, fashion-mnist, cifar10, cifar100), verified: the
    files present are checked, the missing ones fetched (from mirror/<file name> when mirror is
    a base URL), CIFAR unpacked. log: text stream for progress (default stderr). -> None.
    Raises DownloadError. A folder already complete is only read (a read-only copy is fine)."""
    if _verified(name, folder):
        return
    with _folder_lock(folder, log):
        if not _verified(name, folder):   # another run may have completed it while this one waited
            _complete(name, folder, mirror, log)


def ensure_file(remote, path, mirror=None, log=None):
    """Make `path` hold `remote`'s verified bytes (a CIFAR-N label file): checked when present,
    else fetched. -> path. Raises DownloadError."""
    if not os.path.exists(path):
        with _folder_lock(os.path.dirname(path) or ".", log):
            if not os.path.exists(path):
                fetch(remote, path, mirror, log)
                return path
    _check_present(path, remote)
    return path


def _verified(name, folder):
    """True when every file of `name` is in folder and matches its checksum; False when one is
    missing; DownloadError when one is present but wrong (a user's file: never replaced)."""
    if name in UNPACKED:
        inner, members = UNPACKED[name]
        if not all(os.path.isfile(os.path.join(folder, inner, m)) for m in members):
            return False
        for m, md5 in members.items():
            _check_present(os.path.join(folder, inner, m), Remote(m, (), md5=md5))
        return True
    present = True
    for r in SOURCES[name]:
        gz, raw = os.path.join(folder, r.name), os.path.join(folder, r.name[:-3])
        if os.path.isfile(gz):
            _check_present(gz, r)
        elif os.path.isfile(raw) and r.content_sha256:   # uncompressed: its content hash, where published
            _check_present(raw, Remote(r.name[:-3], (), sha256=r.content_sha256))
        elif not os.path.isfile(raw):
            present = False
    return present


def _complete(name, folder, mirror, log):
    """Fetch what `name` lacks in folder (the lock held): the missing IDX files, or the CIFAR
    archive (checked if present) and its unpacked folder."""
    if name not in UNPACKED:
        for r in SOURCES[name]:
            if not any(os.path.isfile(os.path.join(folder, n)) for n in (r.name, r.name[:-3])):
                fetch(r, os.path.join(folder, r.name), mirror, log)
        return
    inner, archive = UNPACKED[name][0], SOURCES[name][0]
    target = os.path.join(folder, inner)
    if os.path.isdir(target) and os.listdir(target):
        raise DownloadError(f"{target} is incomplete (it lacks some of {', '.join(UNPACKED[name][1])}); "
                            f"move it aside and rerun with --download")
    path = os.path.join(folder, archive.name)
    if os.path.exists(path):
        _check_present(path, archive)
    else:
        fetch(archive, path, mirror, log)
    unpack(path, folder, inner)


@contextmanager
def _folder_lock(folder, log):
    """Hold folder/.download.lock (an flock: the kernel releases it when the process dies), so one
    process at a time fetches into folder; another waits for it, saying so once on `log`."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DownloadError(f"cannot write to {folder} ({_reason(e)}); choose a writable --data-dir "
                            f"(or DCM_DATA) for --download") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"download: waiting for another process downloading into {folder}", file=log or sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- Verification

def verify(path, remote):
    """Check the file at `path` against `remote`'s checksums: size and sha256 where published; the
    md5, or else the sha256 of the gunzipped content. -> (True, the check that passed) or
    (False, why not), each a short phrase."""
    size = os.path.getsize(path)
    if remote.size is not None and size != remote.size:
        return False, f"{size} bytes, expected {remote.size}"
    if remote.sha256 and (got := file_digest(path, "sha256")) != remote.sha256:
        return False, f"sha256 {got}, expected {remote.sha256}"
    if remote.md5 and (got := file_digest(path, "md5")) != remote.md5:
        if remote.content_sha256 and content_digest(path) == remote.content_sha256:
            return True, "sha256 of the decompressed bytes"   # the same IDX bytes, recompressed (Debian's package)
        return False, f"md5 {got}, expected {remote.md5}" + ("; its decompressed bytes differ too" if remote.content_sha256 else "")
    return True, "sha256" if remote.sha256 else "md5"


def _check_present(path, remote):
    ok, why = verify(path, remote)
    if not ok:
        raise DownloadError(f"{path} is not the published {remote.name} ({why}); delete it and rerun "
                            f"with --download, or replace it with the official file")


def file_digest(path, algo):
    """Hex digest (algo: "md5" or "sha256") of the file's bytes."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(path):
    """sha256 (hex) of a .gz file's decompressed bytes; None when it is not valid gzip."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


# ----------------------------------------------------------------------------- Fetching one file

class _Lost(Exception):
    """A transfer that failed on the network side (HTTP error, refused, timed out, cut)."""


def fetch(remote, dest, mirror=None, log=None):
    """Download `remote` to `dest`: bytes to dest.part (continued when one is there), verified,
    fsynced, renamed. Official URLs are tried in order; with mirror only mirror/<name>.
    One line on `log` (default stderr) per file. Raises DownloadError; dest is then untouched."""
    log = log or sys.stderr
    part, failures = dest + PART, []
    urls = (f"{mirror.rstrip('/')}/{remote.name}",) if mirror else remote.urls
    for url in urls:
        t0 = time.monotonic()
        try:
            got = _transfer(url, part, remote.name, log)
            break
        except _Lost as e:
            failures.append(f"{url} ({e})")
    else:
        raise DownloadError(_lost_message(remote, part, failures, mirror))
    ok, why = verify(part, remote)
    if not ok:
        os.remove(part)
        raise DownloadError(f"{remote.name} from {url} is not the published file ({why}); it was deleted; "
                            f"rerun with --download, or use another --mirror")
    _place(part, dest)
    dt = max(time.monotonic() - t0, 1e-9)
    print(f"download: {remote.name}: {got} bytes in {dt:.1f} s ({_size(got / dt)}/s) from {url}, "
          f"{why} verified -> {dest}", file=log, flush=True)


def _lost_message(remote, part, failures, mirror):
    have = os.path.getsize(part) if os.path.exists(part) else 0
    todo = f"rerun with --download to continue from byte {have}" if have else "check the address and the network and rerun"
    other = "use another --mirror" if mirror else "pass --mirror URL serving it"
    return f"cannot download {remote.name} from {', '.join(failures)}; {todo}, or {other}"


def _transfer(url, part, name, log):
    """GET url into part, appending from its current size (a Range request; a server that
    ignores it sends everything, and part starts over). -> bytes fetched this time.
    Raises _Lost (network) or DownloadError (the disk)."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
            start, total = _span(resp, have)
            return _copy(resp, part, start, total, name, log) - start
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # nothing left to send: part is whole (verification decides)
            return 0
        raise _Lost(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:   # refused, timeout, reset
        raise _Lost(_reason(e)) from None


def _span(resp, have):
    """(first byte the response body holds, total bytes of the file or None) of a response to a
    request for bytes `have`.. (status 206 resumes at `have`; 200 or a file: URL start at 0)."""
    length = resp.headers.get("Content-Length")
    if getattr(resp, "status", None) != 206:
        return 0, int(length) if length else None
    first, _, total = resp.headers.get("Content-Range", "").replace("bytes ", "").partition("/")
    if not first.split("-")[0].isdigit() or int(first.split("-")[0]) != have:
        raise _Lost(f"the server resumed at {resp.headers.get('Content-Range')!r}, not at byte {have}")
    return have, int(total) if total.isdigit() else None


def _copy(resp, part, start, total, name, log):
    """Write the body of resp into part from byte `start` (truncating what follows). -> the
    bytes part holds. _Lost if the body ends before `total`; DownloadError on a write error."""
    done, show = start, _Progress(name, start, total, log)
    try:
        f = open(part, "r+b" if start else "wb", buffering=0)
    except OSError as e:
        raise DownloadError(f"cannot write {part} ({_reason(e)}); choose a writable --data-dir") from None
    with f:
        f.truncate(start)
        f.seek(start)
        while block := resp.read(CHUNK):
            _write(f, block, part, done, total)
            done += len(block)
            show.update(done)
    show.close()
    if total is not None and done < total:
        raise _Lost(f"the connection closed after {done} of {total} bytes")
    return done


def _write(f, block, part, done, total):
    try:
        f.write(block)
    except OSError as e:   # a full disk: the bytes so far stay in part for the next run
        need = f", {_size(total - done)} more needed" if total else ""
        raise DownloadError(f"cannot write {part} ({_reason(e)}{need}); free space and rerun with "
                            f"--download: it continues from byte {done}") from None


def _place(part, dest):
    """fsync part and rename it to dest (atomic: dest is whole or absent)."""
    try:
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
    except OSError as e:
        raise DownloadError(f"cannot write {dest} ({_reason(e)}); the verified download stays in {part}") from None


# ----------------------------------------------------------------------------- Unpacking

def unpack(archive, folder, inner):
    """Unpack the tar.gz `archive` into folder/inner, whole or not at all: every member must be
    a plain file or folder under inner/ (no absolute path, no '..', no link or device), else
    DownloadError and nothing is written. Members go to a temp folder renamed at the end."""
    tmp = os.path.join(folder, f".{inner}.tmp{os.getpid()}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            unsafe = [m.name for m in members if _member_parts(m, inner) is None]
            if unsafe:
                raise DownloadError(f"{archive} holds {unsafe[0]!r}, outside {inner}/ or not a plain file; "
                                    f"nothing was unpacked; delete it and fetch the official archive")
            for m in members:
                _extract(tar, m, os.path.join(tmp, *_member_parts(m, inner)))
        os.replace(os.path.join(tmp, inner), os.path.join(folder, inner))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DownloadError(f"cannot unpack {archive} into {folder} ({_reason(e)}); free space or delete "
                            f"the archive, and rerun with --download") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _member_parts(m, inner):
    """The path parts of tar member m, which must be a file or folder under inner/; else None."""
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts or not parts or parts[0] != inner:
        return None
    return parts


def _extract(tar, m, path):
    if m.isdir():
        os.makedirs(path, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tar.extractfile(m) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)


# ----------------------------------------------------------------------------- Progress and messages

PROGRESS_LINE_EVERY_S = 30   # without a terminal (a job's log file): one progress line this often


class _Progress:
    """One file's progress on `log`: bytes, rate, ETA on a live line when log is a terminal,
    redrawn at most 5 times a second; otherwise one full line every PROGRESS_LINE_EVERY_S seconds
    (a long download in a job's log is not silent), and fetch's one line per file at the end."""

    def __init__(self, name, start, total, log):
        self.name, self.start, self.total, self.log = name, start, total, log
        self.live = hasattr(log, "isatty") and log.isatty()
        self.t0 = self.shown = time.monotonic()

    def update(self, done):
        now = time.monotonic()
        if self.log is None or now - self.shown < (0.2 if self.live else PROGRESS_LINE_EVERY_S):
            return
        self.shown, rate = now, (done - self.start) / max(now - self.t0, 1e-9)
        of = f" / {_size(self.total)}" if self.total else ""
        eta = f", ETA {(self.total - done) / rate:.0f} s" if self.total and rate > 0 else ""
        text = f"download: {self.name}: {_size(done)}{of} at {_size(rate)}/s{eta}"
        if self.live:
            print(f"\r{text}   ", end="", file=self.log, flush=True)
        else:
            print(text, file=self.log, flush=True)

    def close(self):
        if self.live:
            print("\r\033[K", end="", file=self.log, flush=True)


def _size(n):
    """Bytes as text: 1.5 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _reason(e):
    """An exception as a short phrase: 'Connection refused', 'timed out', 'No space left on device'."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return _reason(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(text.split())
