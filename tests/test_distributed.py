"""Multi-process training (docs/design.md §2; train.py under torchrun) on 2 CPU ranks over gloo:
every rank holds bit-identical parameters, masks and ELR memory; the mask from
all-reduced moments is the single-process mask of the global batch; a 2-rank step is
the single-process step of the global batch; a 2-rank run writes the files of a 1-rank
run and resumes exactly; a user error stops every rank with one line; every rank uses the
run folder rank 0 claimed; a failure on one rank after setup ends every rank with one line
(no traceback); a stop signal on one rank stops all with its exit code.

Ranks get torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
One run goes through torchrun itself; the others start the two ranks directly, which
skips torchrun's agent process (about half the start-up time on a 2-core machine).
Run as `python tests/test_distributed.py worker OUT` (with those variables set), this file is
the worker of the direct tests of the reduction helpers; run as `python tests/test_distributed.py
dump-train DUMP <train.py flags>`, it is train.py with every rank saving its state after every
epoch (bottom of the file).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import dcm_ref as D
import diagnostics
import distributed
import kan
import layers
import nets
import runfolder
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--limit-train", "256", "--epochs", "2", "--batch-size", "64"]  # 4 steps/epoch, 32 per rank
ELR_FLAGS = ["--head", "dkan", "--method", "elr", "--dcm-stats", "interval", "--dcm-interval", "2",
             "--augment", "crop-flip", "--save-masks"]
COT_FLAGS = ["--head", "dfc", "--method", "coteaching", "--dcm-freeze"]
TIMING = {"seconds", "eta_s", "samples_per_s", "wall_s", "train_samples_per_s", "finished"}


# ----------------------------------------------------------------------------- launching ranks

def _env(extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)  # 1 thread each: 2 ranks on 2 cores
    env.update(extra or {})
    return env


def launch(args, nproc=2, extra_env=None, timeout=120, cwd=ROOT, during=None):
    """Start nproc ranks of `python *args` in cwd with torchrun's variables; -> [(rc, stdout, stderr)] by rank.
    during(procs, logs): called once the ranks are started (logs: (stdout, stderr) files by rank; read
    them with read_log while the ranks run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], []
    for r in range(nproc):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files: a full pipe cannot block a rank
        env = _env(dict(extra_env or {}, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
        procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=err, text=True))
        logs.append((out, err))
    try:
        if during is not None:
            during(procs, logs)
        rcs = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for rc, (out, err) in zip(rcs, logs):
        out.seek(0)
        err.seek(0)
        results.append((rc, out.read(), err.read()))
    return results


def read_log(f):
    """What a running rank has written so far to its log file f (pread: the rank's file offset is untouched)."""
    return os.pread(f.fileno(), 1 << 20, 0).decode(errors="replace")


def train_command(dump=None):
    """train.py, or with `dump` this file's dump-train mode (train.py saving every rank's state)."""
    return ["train.py"] if dump is None else [os.path.relpath(__file__, ROOT), "dump-train", dump]


def train_ranks(flags, dump=None):
    results = launch([*train_command(dump), *flags])
    for rc, out, err in results:
        assert rc == 0, err
    return results


def torchrun(flags, dump=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train_command(dump), *flags]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return r


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def tensors(obj, prefix=""):
    """{path: tensor} of every tensor inside nested dicts/lists/tuples."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def load(path):
    return torch.load(path, weights_only=False)


# ----------------------------------------------------------------------------- runs (once per module)

@pytest.fixture(scope="module")
def elr_runs(tmp_path_factory):
    """DKAN + ELR + pooled-interval statistics + per-rank crops: a full 2-rank run through torchrun;
    the same run resumed under 2 ranks from its epoch-1 checkpoint; a 1-rank run.

    The epoch-1 checkpoint is the checkpoint.pt rank 0 wrote after epoch 1, kept by
    dump-train (test_train covers --stop-after): it saves a third 2-rank launch."""
    root = tmp_path_factory.mktemp("elr")
    full, part, one, dump = (str(root / n) for n in ("full", "part", "one", "dump"))
    torchrun(QUICK + ELR_FLAGS + ["--out", full], dump=dump)
    os.makedirs(part)
    shutil.copy(os.path.join(dump, "checkpoint_epoch001.pt"), os.path.join(part, "checkpoint.pt"))
    train_ranks(["--out", part, "--resume", "--epochs", "2"])
    assert train.main(QUICK + ELR_FLAGS + ["--out", one]) == 0
    return dict(full=full, part=part, one=one, dump=dump)


@pytest.fixture(scope="module")
def cot_dump(tmp_path_factory):
    """Co-teaching (two networks, two masks) with --dcm-freeze on 2 ranks; per-rank state dumps."""
    root = tmp_path_factory.mktemp("cot")
    dump = str(root / "dump")
    train_ranks(QUICK + COT_FLAGS + ["--out", str(root / "run")], dump=dump)
    return dump


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("worker") / "res")
    for rc, _, err in launch([os.path.abspath(__file__), "worker", out]):
        assert rc == 0, err
    return [load(f"{out}.rank{r}") for r in range(2)]


# ----------------------------------------------------------------------------- properties

def test_torchrun_environment_is_read_and_checked():
    assert distributed.dist_from_env({}) == distributed.Dist(0, 1, 0)
    assert distributed.dist_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Dist(1, 2, 1)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ValueError, match="WORLD_SIZE"):
            distributed.dist_from_env(bad)


def test_bad_torchrun_environment_is_a_one_line_error_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    assert train.main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: RANK/WORLD_SIZE/LOCAL_RANK = 5/2/") and err.count("\n") == 1


@pytest.mark.parametrize("which", ["elr", "coteaching"])
def test_every_rank_holds_bit_identical_parameters_masks_and_memory(which, elr_runs, cot_dump):
    dump = elr_runs["dump"] if which == "elr" else cot_dump
    for epoch in (1, 2):
        s0, s1 = (load(os.path.join(dump, f"rank{r}_epoch{epoch:03d}.pt")) for r in range(2))
        t0, t1 = tensors(s0), tensors(s1)
        assert t0.keys() == t1.keys()
        assert [k for k in t0 if not torch.equal(t0[k], t1[k])] == []
        for sd in s0["nets"]:  # not vacuous: real masks, recomputed during the run
            assert int(sd["head.dcm_updates"]) > 0 and 0 < float(sd["head.mask"].mean()) < 0.2
        assert len(s0["nets"]) == (2 if which == "coteaching" else 1)


def test_elr_memory_holds_the_rows_of_every_rank(elr_runs):
    """Each rank computes the new targets of its own shard; after the epoch every rank's memory
    holds all 256 rows (4 global batches of 64), not only the 128 it computed."""
    for r in range(2):
        t = load(os.path.join(elr_runs["dump"], f"rank{r}_epoch001.pt"))["elr_t"]
        assert int((t.abs().sum(1) > 0).sum()) == 256


def test_no_gloo_thread_outlives_the_run(elr_runs):
    """train.main under torchrun frees its process group: a gloo worker thread alive into
    interpreter shutdown can abort a finished run with exit -6 (distributed.init_distributed)."""
    for r in range(2):
        with open(os.path.join(elr_runs["dump"], f"rank{r}_threads.json")) as f:
            names = json.load(f)
        assert names and not [n for n in names if "gloo" in n], names


def test_mask_from_all_reduced_moments_equals_single_process_mask_of_the_global_batch(worker_results):
    for res in worker_results:
        for head in ("dfc", "dkan"):
            s_ddp, s_one = res[f"{head}_scores"]
            assert torch.allclose(s_ddp, s_one, rtol=1e-6, atol=1e-9)
            m_ddp, m_one = res[f"{head}_mask"]
            assert torch.equal(m_ddp, m_one) and 0 < float(m_one.mean()) < 1
        for m_ddp, m_one in zip(*res["interval_masks"]):  # pooled moments over the interval, too
            assert torch.equal(m_ddp, m_one)


def test_two_rank_step_equals_single_process_step_of_the_global_batch(worker_results):
    """BN-free net, 3 SGD steps with momentum, DCM masks and active clipping: averaged gradients
    of the per-rank shard means are the gradient of the global batch's mean."""
    for res in worker_results:
        ddp, one = res["step_params"]
        for k in one:
            assert torch.allclose(ddp[k], one[k], rtol=1e-5, atol=1e-6), k
        assert all(torch.equal(a, b) for a, b in zip(*res["step_masks"]))
        assert res["grad_norm"] > res["clip"]  # the clip bites, so its place (after the average) matters
    assert all(torch.equal(worker_results[0]["step_params"][0][k], worker_results[1]["step_params"][0][k])
               for k in worker_results[0]["step_params"][0])


def test_sharded_evaluation_returns_every_row_in_order(worker_results):
    for res in worker_results:
        z_ddp, z_one = res["eval"]
        assert z_ddp.shape == z_one.shape == (37, 5)
        assert torch.allclose(z_ddp, z_one, rtol=1e-5, atol=1e-6)


def test_every_rank_takes_rank0s_value_and_stops_with_the_same_signal(worker_results):
    """from_rank0 gives rank 0's value (None too); a SIGTERM on rank 1 only, or SIGINT on rank 0 and
    SIGTERM on rank 1, stops both ranks with 143; no signal on any rank stops none."""
    assert [res["from_rank0"] for res in worker_results] == [["runs/x-2", None]] * 2
    assert [res["stops"] for res in worker_results] == [[(True, 143), (True, 143), (False, None)]] * 2


def test_a_failed_write_on_rank0_after_the_last_collective_stops_the_other_ranks(worker_results):
    """train_cli.on_rank0 (final.json): rank 0's error is re-raised on rank 0, PeerFailed elsewhere
    (a quiet exit 2), so no rank exits 0 from a run whose final.json was not written."""
    assert [res["on_rank0"] for res in worker_results] == [["ok", "OSError"], ["ok", "PeerFailed"]]


def test_every_rank_learns_the_lowest_failing_rank(worker_results):
    """Setup failed nowhere / on rank 1 only / on both: every rank gets -1 / 1 / 0 and stops alike."""
    assert [res["first_failure"] for res in worker_results] == [[-1, 1, 0]] * 2


def test_two_rank_run_writes_the_files_of_a_one_rank_run(elr_runs):
    def files(out):
        return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert files(elr_runs["full"]) == files(elr_runs["one"])
    assert "masks/epoch_002.npz" in files(elr_runs["full"])
    cfg = {n: json.load(open(os.path.join(elr_runs[n], "config.json"))) for n in ("full", "one")}
    assert cfg["full"]["world_size"] == 2 and cfg["one"]["world_size"] == 1
    assert cfg["full"].keys() == cfg["one"].keys()
    rows = {n: read_jsonl(os.path.join(elr_runs[n], "metrics.jsonl")) for n in ("full", "one")}
    assert [r.keys() for r in rows["full"]] == [r.keys() for r in rows["one"]]
    final = {n: json.load(open(os.path.join(elr_runs[n], "final.json"))) for n in ("full", "one")}
    assert final["full"].keys() == final["one"].keys() and 0 <= final["full"]["test_acc_last"] <= 1


def test_resume_under_two_ranks_ends_exactly_where_the_uninterrupted_run_ends(elr_runs):
    def comparable(out):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(os.path.join(out, "metrics.jsonl"))]
    assert comparable(elr_runs["full"]) == comparable(elr_runs["part"])
    a, b = (load(os.path.join(elr_runs[n], "checkpoint.pt")) for n in ("full", "part"))
    ta, tb = tensors({k: a[k] for k in ("nets", "opts", "elr_t")}), \
        tensors({k: b[k] for k in ("nets", "opts", "elr_t")})
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_user_error_stops_every_rank_with_one_line(tmp_path):
    """63 does not split into 2 equal shards: every rank exits 2, one line in all, no hang."""
    results = launch(["train.py", *QUICK, "--batch-size", "63", "--out", str(tmp_path / "x")], timeout=90)
    assert [rc for rc, _, _ in results] == [2, 2]
    lines = [line for _, _, err in results for line in err.strip().splitlines()]
    assert len(lines) == 1 and "--batch-size 63" in lines[0] and "Traceback" not in lines[0], lines
    assert not os.path.exists(tmp_path / "x")


def test_runs_under_a_default_name_take_the_next_free_folder_on_every_rank(tmp_path):
    """Twice the same 2-rank run without --out in one folder: rank 0 claims runs/<name>, then
    runs/<name>-2, and the other rank trains into that same folder (it used to check runs/<name>,
    find a run there and stop: 'already holds a run')."""
    for _ in range(2):
        results = launch([os.path.join(ROOT, "train.py"), *QUICK, "--epochs", "1"], cwd=str(tmp_path), timeout=150)
        assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    first, second = sorted(os.listdir(tmp_path / "runs"))
    assert second == first + "-2"
    for name in (first, second):
        assert os.path.exists(tmp_path / "runs" / name / "final.json")
        assert json.load(open(tmp_path / "runs" / name / "config.json"))["out"] == os.path.join("runs", name)


def test_a_run_folder_rank0_cannot_claim_stops_every_rank_with_one_line(tmp_path):
    """Rank 0's claim fails (a running train.py holds the folder): it still answers the broadcast the
    other rank waits on, and every rank exits 2 promptly, with one line from rank 0."""
    out = str(tmp_path / "x")
    held = checkpoint.lock_run(out)
    try:
        results = launch(["train.py", *QUICK, "--out", out], timeout=90)
    finally:
        checkpoint.unlock_run(held)
    assert [rc for rc, _, _ in results] == [2, 2]
    lines = [line for _, _, err in results for line in err.strip().splitlines()]
    assert len(lines) == 1 and "in use" in lines[0] and results[0][2].strip() == lines[0], lines


def test_a_failure_after_setup_stops_every_rank_without_a_traceback(tmp_path):
    """Rank 0 cannot write noise_report.json (a folder of that name) after the ranks agreed on the
    setup: it reports that in one line; the other rank, whose next all-reduce fails because rank 0
    has gone, ends with one line too (distributed.PeerLost), not gloo's traceback."""
    out = tmp_path / "x"
    (out / "noise_report.json").mkdir(parents=True)
    results = launch(["train.py", *QUICK, "--out", str(out)], timeout=90)
    assert [rc for rc, _, _ in results] == [2, 2], [err for _, _, err in results]
    assert not [r for r, (_, o, e) in enumerate(results) if "Traceback" in o + e], results
    (line0,), (line1,) = (err.strip().splitlines() for _, _, err in results)
    assert line0.startswith("train.py: error: cannot write") and "noise_report.json" in line0
    assert line1.startswith("train.py: error (rank 1): another rank stopped; see its message")


def test_sigterm_to_one_rank_stops_every_rank_with_143(tmp_path):
    """SIGTERM to rank 1 only, during training: every rank stops after the same step and exits
    143 (128 + SIGTERM), and rank 0 reports SIGTERM (it used to report SIGINT and exit 130)."""
    out = str(tmp_path / "x")

    def term_rank1(procs, logs):
        for _ in range(1200):   # until rank 0 has printed its first epoch (at most 120 s)
            if "epoch   1/" in read_log(logs[0][0]) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
    results = launch(["train.py", *QUICK, "--epochs", "1000", "--out", out], during=term_rank1, timeout=180)
    assert [rc for rc, _, _ in results] == [143, 143], [err for _, _, err in results]
    assert "interrupted (SIGTERM)" in results[0][2] and "Traceback" not in results[0][2] + results[1][2]
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["epoch"] >= 1


# ----------------------------------------------------------------------------- the worker

def _moment_checks(dd, g):
    """DFC and DKAN masks from all-reduced shard moments vs from the whole batch (in one process)."""
    res = {}
    v = torch.randn(12, 16, generator=g) * torch.rand(16, generator=g) * 3
    w = torch.randn(5, 16, generator=g)
    shard = v.tensor_split(dd.world)[dd.rank]
    s_ddp = D.scores_from_moments(distributed.all_sum(D.moments(shard), dd), w)
    s_one = D.edge_scores(v, w)
    res["dfc_scores"], res["dfc_mask"] = (s_ddp, s_one), (D.topk_mask(s_ddp, 0.3), D.topk_mask(s_one, 0.3))
    params = kan.kan_init(16, 5, generator=g)
    phi = kan.dkan_features(params, v)   # the DKAN head's features (layers.DKANLinear._features)
    s_ddp = kan.kan_scores_from_moments(distributed.all_sum(kan.kan_moments(phi.tensor_split(dd.world)[dd.rank]), dd), params)
    s_one = kan.kan_scores_from_moments(kan.kan_moments(phi), params)
    res["dkan_scores"], res["dkan_mask"] = (s_ddp, s_one), (D.topk_mask(s_ddp, 0.3), D.topk_mask(s_one, 0.3))
    batches = [torch.randn(8, 16, generator=g) * torch.rand(16, generator=g) for _ in range(6)]
    masks = []
    for ctx in (dd, distributed.Dist()):
        st, out = D.mask_init((5, 16)), []
        for b in batches:
            st = D.mask_schedule_step(st, distributed.all_sum(D.moments(b.tensor_split(ctx.world)[ctx.rank]), ctx),
                                      lambda m: D.scores_from_moments(m, w), 0.3, interval=3, stats="interval")
            out.append(st.mask)
        masks.append(out)
    res["interval_masks"] = masks
    return res


def _step_checks(dd, g):
    """3 training steps of a BN-free net: 2 ranks on shards vs one process on the global batches."""
    a = train.build_parser().parse_args(["--head", "dfc", "--keep", "0.3", "--grad-clip", "0.05"])
    xs, ys = torch.randn(3, 8, 1, 8, 8, generator=g), torch.randint(0, 5, (3, 8), generator=g)
    res = {"clip": a.grad_clip}
    params, masks = [], []
    for ctx in (dd, distributed.Dist()):
        torch.manual_seed(1)
        net = nets.Net(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh()), layers.DCMLinear(16, 5, keep=a.keep))
        net.head.all_reduce = lambda m, ctx=ctx: distributed.all_sum(m, ctx)   # as train.init_state sets it
        opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
        layers.attach(net, opt)
        kept = []
        for x, y in zip(xs, ys):
            xb, yb = x.tensor_split(ctx.world)[ctx.rank], y.tensor_split(ctx.world)[ctx.rank]
            loss = F.cross_entropy(net(xb), yb)
            if ctx.world == 1 and "grad_norm" not in res:
                gr = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
                res["grad_norm"] = float(torch.cat([t.reshape(-1) for t in gr]).norm())
            opt.zero_grad(set_to_none=True)   # train.train_step's backward, all-reduce, clip, step
            loss.backward()
            distributed.average_grads(net.parameters(), ctx)
            torch.nn.utils.clip_grad_norm_(net.parameters(), a.grad_clip)
            opt.step()
            kept.append(net.head.mask.clone())
        params.append({k: t.detach().clone() for k, t in net.state_dict().items()})
        masks.append(kept)
    res["step_params"], res["step_masks"] = tuple(params), tuple(masks)
    x8 = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8, generator=g)
    res["eval"] = tuple(diagnostics.eval_logits(net, x8, (0.5,), (0.25,), batch=8, dd=c) for c in (dd, distributed.Dist()))
    return res


def _agreement_checks(dd):
    """from_rank0 and the stop-signal agreement (train_cli.stop_requested / stopped) on real ranks."""
    from conftest import stop_state
    import train_cli
    res = {"from_rank0": [distributed.from_rank0(f"runs/x-{dd.rank + 2}", dd), distributed.from_rank0(None, dd)]}
    stops = []
    for got in ({1: signal.SIGTERM}, {0: signal.SIGINT, 1: signal.SIGTERM}, {}):
        st = stop_state(got.get(dd.rank), dd)
        asked = train_cli.stop_requested(st)
        stops.append((asked, train_cli.stopped(st, lambda *a, **k: None, "c.pt", 1, "o") if asked else None))
    res["stops"] = stops
    outcomes = []
    for fails in (False, True):   # rank 0's write after the last collective (final.json) succeeds / fails
        def write():
            if fails:
                raise OSError(28, "No space left on device", "final.json")
        try:
            train_cli.on_rank0(write, dd)
            outcomes.append("ok")
        except Exception as e:
            outcomes.append(type(e).__name__)
    res["on_rank0"] = outcomes
    return res


def worker(out):
    dd = distributed.dist_from_env(os.environ)
    distributed.init_distributed(dd)
    try:
        g = torch.Generator().manual_seed(0)  # same data on every rank; each takes its shard
        res = _moment_checks(dd, g)
        res.update(_step_checks(dd, g))
        res["first_failure"] = [distributed.first_failure(dd.rank in fails, dd) for fails in ((), (1,), (0, 1))]
        res.update(_agreement_checks(dd))
        torch.save(res, f"{out}.rank{dd.rank}")
    finally:
        distributed.close()


def dump_train(dump, argv):
    """train.main(argv) on this rank; after every epoch e the rank saves what it would checkpoint
    (history and best left out) to dump/rank{r}_epoch{e:03d}.pt, and rank 0 keeps the
    checkpoint.pt of epoch e - 1 as dump/checkpoint_epoch{e-1:03d}.pt. The hook wraps
    diagnostics.grad_error_metrics, which every rank calls once per epoch after evaluation, just
    before the epoch's row is logged and rank 0 writes the epoch's checkpoint."""
    rank, epoch, inner = distributed.dist_from_env(os.environ).rank, [0], diagnostics.grad_error_metrics

    out = argv[argv.index("--out") + 1]

    def hooked(st, d, probe, loss_fn, loss_name):
        metrics = inner(st, d, probe, loss_fn, loss_name)
        epoch[0] += 1
        os.makedirs(dump, exist_ok=True)
        torch.save(runfolder.checkpoint_state(st, epoch[0], runfolder.RunLog({})), os.path.join(dump, f"rank{rank}_epoch{epoch[0]:03d}.pt"))
        if rank == 0:
            shutil.copy(os.path.join(out, "checkpoint.pt"), os.path.join(dump, f"checkpoint_epoch{epoch[0] - 1:03d}.pt"))
        return metrics
    diagnostics.grad_error_metrics = hooked
    rc = train.main(argv)
    with open(os.path.join(dump, f"rank{rank}_threads.json"), "w") as f:
        json.dump(thread_names(), f)   # after main: the process group is closed
    return rc


def thread_names():
    """Names of this process's native threads (Linux /proc): gloo's workers are "pt_gloo_runloop"."""
    task = f"/proc/{os.getpid()}/task"
    names = []
    for t in sorted(os.listdir(task)):
        with open(os.path.join(task, t, "comm")) as f:
            names.append(f.read().strip())
    return names


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2])
if __name__ == "__main__" and sys.argv[1:2] == ["dump-train"]:
    sys.exit(dump_train(sys.argv[2], sys.argv[3:]))
