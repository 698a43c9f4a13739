"""The accuracy benchmark's finished runs, packed: one JSON Lines file per grid family
(results/accuracy-runs.jsonl for --grid main|ablations|all, results/round2-runs.jsonl for
the round-two grids), one finished run per line. train.py still writes a folder per run
(--runs-dir, scratch, not in git); once a run has its final.json, the benchmark appends it
here and the tables read only these files.

A line is one JSON object with exactly these fields:

    key           the run's key (bench/accuracy.py run_key): it ends with the first 8 hex
                  digits of sha1(" ".join(argv)), checked on read
    argv          the train.py flags of the run, without --out (a list of strings)
    packed        when the run was packed (UTC, ISO 8601)
    final         final.json (must hold test_acc_last and test_acc_best)
    config        config.json (the stale check compares it with train.py's parser today)
    noise_report  noise_report.json, or null if the run wrote none
    metrics       metrics.jsonl, one object per epoch (each with an integer "epoch")

stdout.log is not packed: no table reads it, and metrics hold what its epoch lines print.
Reading checks every line: a line that does not parse, a missing or mistyped field, a key
that does not match its argv or a key seen twice is a PackError naming the file and line.
Appending rewrites the file to a temporary one and renames it over the old one, under a lock
file, and skips a key already there: a line is never lost, half-written or duplicated.
"""
import contextlib
import datetime
import fcntl
import hashlib
import json
import os

PACKS = {"accuracy": "accuracy-runs.jsonl", "round2": "round2-runs.jsonl", "mechanism": "mechanism-runs.jsonl"}   # family -> file name
FIELDS = {"key": str, "argv": list, "packed": str, "final": dict, "config": dict,
          "noise_report": (dict, type(None)), "metrics": list}


class PackError(ValueError):
    """A damaged pack or run folder; the message is one line naming the file (and line)."""


def argv_digest(argv):
    """The 8 hex digits a run key ends with: sha1 of the space-joined train.py argv."""
    return hashlib.sha1(" ".join(argv).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- reading

def check_record(record):
    """-> None if record is a well-formed pack line (see the module docstring), else the reason."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a JSON object"
    for name, kind in FIELDS.items():
        if name not in record:
            return f"missing field {name!r}"
        if not isinstance(record[name], kind):
            return f"field {name!r} is a {type(record[name]).__name__}"
    if set(record) - set(FIELDS):
        return f"unknown field(s) {', '.join(sorted(set(record) - set(FIELDS)))}"
    if not all(isinstance(a, str) for a in record["argv"]) or not record["key"].endswith("-" + argv_digest(record["argv"])):
        return f"key {record['key']} does not match its argv (digest {argv_digest(record['argv'])})"
    for name in ("test_acc_last", "test_acc_best"):
        if not isinstance(record["final"].get(name), (int, float)):
            return f"final has no number {name!r}"
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in record["metrics"]):
        return "a metrics row is not an object with an integer 'epoch'"
    return None


def parse_line(line, where):
    """One pack line -> its record; PackError('<where>: <reason>') if it is damaged."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise PackError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    reason = check_record(record)
    if reason:
        raise PackError(f"{where}: {reason}")
    return record


def read_pack(path):
    """A pack file -> {key: record} in file order ({} if there is no file). PackError on the
    first damaged line, or a key seen twice."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise PackError(f"{path}: cannot read ({e})") from None
    out, first = {}, {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_line(line, f"{path}:{n}")
        if record["key"] in out:
            raise PackError(f"{path}:{n}: run {record['key']} is packed twice (also line {first[record['key']]})")
        out[record["key"]], first[record["key"]] = record, n
    return out


def read_packs(pack_dir):
    """Every pack file of PACKS in pack_dir -> one {key: record}; a key in two packs is a PackError."""
    out = {}
    for name in PACKS.values():
        path = os.path.join(pack_dir, name)
        for key, record in read_pack(path).items():
            if key in out:
                raise PackError(f"{path}: run {key} is also in another pack of {pack_dir}")
            out[key] = record
    return out


# ----------------------------------------------------------------------------- writing

def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PackError(f"{path}: {what} is not JSON ({e.msg} at line {e.lineno})") from None


def record_from_folder(run_dir, key, argv):
    """A finished train.py run folder (final.json written) -> its pack record. PackError (one
    line) when a file is missing or damaged."""
    try:
        final = _read_json(os.path.join(run_dir, "final.json"), "final.json")
        config = _read_json(os.path.join(run_dir, "config.json"), "config.json")
        path = os.path.join(run_dir, "noise_report.json")
        noise = _read_json(path, "noise_report.json") if os.path.exists(path) else None
        metrics = []
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    metrics.append(parse_metrics_row(line, f"{f.name}:{n}"))
    except OSError as e:
        raise PackError(f"{run_dir}: cannot pack the run ({type(e).__name__}: {e.strerror}: {e.filename})") from None
    record = dict(key=key, argv=list(argv), packed=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  final=final, config=config, noise_report=noise, metrics=metrics)
    reason = check_record(record)
    if reason:
        raise PackError(f"{run_dir}: cannot pack the run: {reason}")
    return record


def parse_metrics_row(line, where):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise PackError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None


def dump_line(record):
    """One record -> its pack line (compact JSON, fields in FIELDS order, with the newline)."""
    return json.dumps({name: record[name] for name in FIELDS}, separators=(",", ":")) + "\n"


@contextlib.contextmanager
def _locked(folder):
    """An exclusive flock on <folder>/.pack.lock for the block: one appender at a time, across
    threads and processes."""
    with open(os.path.join(folder, ".pack.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append(path, record):
    """Add record as the pack's last line, atomically (a temp file renamed over the pack) -> True;
    False (nothing written) if this pack or another pack of PACKS beside it holds its key. The
    packs are read and checked first, under the folder's lock."""
    reason = check_record(record)
    if reason:
        raise PackError(f"{path}: refusing to append run {record.get('key') if isinstance(record, dict) else '?'}: {reason}")
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    with _locked(folder):
        if record["key"] in read_pack(path) or record["key"] in read_packs(folder):
            return False
        old = b""
        if os.path.exists(path):
            with open(path, "rb") as f:
                old = f.read()
        _replace(path, old + (b"\n" if old and not old.endswith(b"\n") else b"") + dump_line(record).encode())
    return True


def _replace(path, data):
    """Write data to a temp file beside path, flush it to disk, and rename it over path."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):   # the rename failed: the pack is as it was
            os.remove(tmp)


def write_pack(path, records):
    """A whole pack at once (records in order, keys unique), atomically: for building a pack from folders."""
    keys = [r["key"] for r in records]
    if len(set(keys)) != len(keys):
        raise PackError(f"{path}: a run key appears twice")
    for r in records:
        reason = check_record(r)
        if reason:
            raise PackError(f"{path}: run {r.get('key')}: {reason}")
    _replace(path, "".join(dump_line(r) for r in records).encode())
