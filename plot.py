"""Figures of the diagnostics of Zhang et al., "Combating Noisy Labels via Dynamic
Connection Masking" (arXiv 2508.09697), from the runs train.py writes (Fig. 3-5; docs/design.md §8):
accuracy and memorisation, gradient error (Fig. 3), confidence on clean vs noisy
samples (Fig. 4), mask snapshots and mask change (Fig. 5).

    python train.py --out runs/dfc --save-masks && python train.py --out runs/fc --head fc
    python plot.py runs/dfc                                # PNGs written into runs/dfc
    python plot.py runs/dfc runs/fc --out figs --epochs 1,10,30
    python plot.py --table runs/*                          # one markdown table comparing runs

Writes accuracy.png, grad_error.png, confidence.png, mask_change.png, masks.png
(needs --save-masks) and summary.png (four panels on one page). A figure whose data
no run has is skipped, with a line saying so. matplotlib is imported only here.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

MATPLOTLIB_MISSING = "plot.py needs matplotlib: pip install matplotlib"
DCM_HEADS = ("dfc", "dkan")   # nets.DCM_HEADS; plot.py reads run folders without importing torch


class PlotError(Exception):
    """Bad input: reported in one line, exit 2."""


# ----------------------------------------------------------------------------- Reading runs

def read_jsonl(path):
    """Rows of a metrics.jsonl file (one dict per epoch)."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise PlotError(f"{path} line {n} is not JSON; the file is damaged") from None
    return rows


def read_run(path):
    """One run folder -> dict(path, config, rows, masks={epoch: npz path})."""
    metrics = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise PlotError(f"{path} is not a run folder (no metrics.jsonl); expected the --out DIR of train.py")
    rows = read_jsonl(metrics)
    if not rows:
        raise PlotError(f"{metrics} has no epochs yet; let the run finish an epoch first")
    cfg_path = os.path.join(path, "config.json")
    config = {}
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                config = json.load(f)
        except json.JSONDecodeError:
            raise PlotError(f"{cfg_path} is not JSON; the file is damaged") from None
    mask_dir = os.path.join(path, "masks")
    masks = {}
    if os.path.isdir(mask_dir):
        for name in os.listdir(mask_dir):
            m = re.fullmatch(r"epoch_(\d+)\.npz", name)
            if m:
                masks[int(m.group(1))] = os.path.join(mask_dir, name)
    return dict(path=path, config=config, rows=rows, masks=dict(sorted(masks.items())))


def run_label(config, path):
    """'dfc keep 0.1 · ce' style label from config.json (head, keep, loss, method)."""
    if not config:
        return os.path.basename(os.path.normpath(path))
    head = config.get("head", "?")
    if head in DCM_HEADS:
        head += f" keep {config.get('keep', '?'):g}" if isinstance(config.get("keep"), (int, float)) else ""
    label = f"{head} · {config.get('loss', '?')}"
    if config.get("method", "standard") != "standard":
        label += f" · {config['method']}"
    return label


def labelled(runs):
    """Attach a unique 'label' and a fixed 'color' to every run (a panel showing only some
    runs, e.g. the DCM ones, keeps each run's colour); equal labels get the folder name appended."""
    base = [run_label(r["config"], r["path"]) for r in runs]
    out = []
    for i, (r, lab) in enumerate(zip(runs, base)):
        if base.count(lab) > 1:
            lab += f" ({os.path.basename(os.path.normpath(r['path']))})"
        out.append(dict(r, label=lab, color=f"C{i % 10}"))
    return out


def series(rows, key):
    """(epochs, values) of the rows where `key` is a number."""
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [e for e, _ in pts], [v for _, v in pts]


def has(runs, key):
    return any(series(r["rows"], key)[0] for r in runs)


def parse_epochs(text):
    """'1,5,30' -> [1, 5, 30]; None -> None (pick first, middle and last)."""
    if text is None:
        return None
    try:
        epochs = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PlotError(f"--epochs expects epoch numbers like 1,5,30, got {text!r}") from None
    if not epochs or min(epochs) < 1:
        raise PlotError(f"--epochs expects epoch numbers >= 1 like 1,5,30, got {text!r}")
    return epochs


def mask_epochs(run, wanted):
    """The saved epochs to draw for one run: `wanted`, or first, middle and last."""
    saved = list(run["masks"])
    if wanted is None:
        return sorted({saved[0], saved[len(saved) // 2], saved[-1]})
    missing = [e for e in wanted if e not in run["masks"]]
    if missing:
        raise PlotError(f"--epochs {missing[0]}: {run['path']} has no masks/epoch_{missing[0]:03d}.npz "
                        f"(saved epochs {saved[0]}..{saved[-1]})")
    return wanted


# ----------------------------------------------------------------------------- Panels
# Each panel draws every run in its own colour: solid, dashed and dotted lines tell
# apart the quantities of one run.

def load_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(MATPLOTLIB_MISSING) from None
    return plt


def lines(ax, runs, keys, title, ylabel):
    """keys: [(metric, suffix, linestyle)]; one colour per run, the same in every panel (labelled)."""
    for i, r in enumerate(runs):
        for key, suffix, style in keys:
            x, y = series(r["rows"], key)
            if x:
                ax.plot(x, y, style, color=r.get("color", f"C{i % 10}"), label=f"{r['label']}{suffix}", marker="." if len(x) < 3 else None)
    ax.set_title(title, fontsize=10)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:  # e.g. the summary of an FC run has no mask change
        ax.text(0.5, 0.5, "no data in these runs", ha="center", va="center", transform=ax.transAxes, color="0.5")


def panel_accuracy(ax, runs):
    lines(ax, runs, [("test_acc", ": test", "-"), ("train_acc_clean", ": train vs clean labels", ":"),
                     ("train_acc_noisy", ": train vs noisy labels", "--")], "Accuracy and memorisation", "accuracy")
    ax.set_ylim(0, 1)


def panel_grad_cos(ax, runs, key="grad_cos_last", what="backbone's last layer θ"):
    lines(ax, runs, [(key, "", "-")], f"Gradient error (Fig. 3): w.r.t. {what}", "cos(∇L(ỹ), ∇L(y))")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylim(-1.05, 1.05)


def panel_grad_norm(ax, runs):
    lines(ax, runs, [("grad_err_feat_norm", ": mean ‖∇ᵥL(ỹ) − ∇ᵥL(y)‖", "-"),
                     ("grad_err_feat_bound", ": DCM bound 2√k·max|W⊙M| (CE)", "--")],
          "Feature-gradient error per probe sample", "L2 norm")
    ax.set_ylim(bottom=0)


def panel_confidence(ax, runs):
    lines(ax, runs, [("conf_clean", ": clean samples", "-"), ("conf_noisy", ": noisy samples", "--")],
          "Confidence (Fig. 4): mean p of the given label", "mean softmax probability")
    ax.set_ylim(0, 1)


def panel_fit_noisy(ax, runs):
    lines(ax, runs, [("fit_noisy", "", "-")], "Memorisation: noisy samples predicted as their noisy label", "share")
    ax.set_ylim(0, 1)


def dcm_runs(runs):
    """The runs whose head is masked (config says dfc/dkan, or a kept fraction below 1)."""
    return [r for r in runs if r["config"].get("head") in DCM_HEADS or any(v < 1 for v in series(r["rows"], "kept")[1])]


def panel_mask_change(ax, runs):
    lines(ax, dcm_runs(runs), [("mask_change", "", "-")], "Mask change (Fig. 5): mean 1 − Jaccard per update", "1 − Jaccard")
    ax.set_ylim(bottom=0)


def panel_kept(ax, runs):
    lines(ax, dcm_runs(runs), [("kept", "", "-")], "Kept fraction of head edges", "fraction")
    ax.set_ylim(0, 1.05)


# ----------------------------------------------------------------------------- Figures

def save(plt, fig, path, dpi):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_masks(plt, picks, path, dpi):
    """Heatmaps of the saved masks: one row per (run, epochs) in picks, one column per epoch."""
    ncol = max(len(e) for _, e in picks)
    fig, axes = plt.subplots(len(picks), ncol, figsize=(3.2 * ncol, 2.2 * len(picks)), squeeze=False)
    for row, (r, epochs) in enumerate(picks):
        for col in range(ncol):
            ax = axes[row][col]
            if col >= len(epochs):
                ax.axis("off")
                continue
            m = load_mask(r["masks"][epochs[col]])
            ax.imshow(m, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
            ax.set_title(f"{r['label']}\nepoch {epochs[col]}: kept {m.mean():.3f}", fontsize=8)
            ax.set(xlabel="feature k", ylabel="class j")
    fig.suptitle("DCM masks (black = kept edge)", fontsize=10)
    save(plt, fig, path, dpi)


def load_mask(path):
    """The (C, d) bool mask of a masks/epoch_XXX.npz; PlotError (one line) when it is damaged."""
    try:
        with np.load(path) as z:
            return z["mask"]
    except Exception as e:   # BadZipFile, a pickled or truncated file, no "mask" array, ...
        raise PlotError(f"{path} is damaged or not a train.py mask file ({type(e).__name__}); "
                        f"delete it or rerun with --save-masks") from None


def make_figures(runs, out, mask_picks, dpi):
    """Write every figure the runs have data for into `out`; returns (written, skipped) messages.

    mask_picks: [(run, [epochs])] for the heatmaps of masks.png."""
    plt = load_pyplot()
    written, skipped = [], []
    dcm = dcm_runs(runs)
    plans = [
        ("accuracy.png", True, (1, 1), [panel_accuracy], runs, ""),
        ("grad_error.png", has(runs, "grad_cos_last"), (1, 3), [panel_grad_cos,
         lambda ax, rs: panel_grad_cos(ax, rs, "grad_cos_feat", "features v (mean per sample)"), panel_grad_norm],
         runs, "no run tracked the gradient error (train.py --track-grad-error on noisy labels)"),
        ("confidence.png", has(runs, "conf_noisy"), (1, 2), [panel_confidence, panel_fit_noisy], runs,
         "no run has noisy training samples"),
        ("mask_change.png", bool(dcm), (1, 2), [panel_mask_change, panel_kept], dcm, "no run has a DCM head (dfc, dkan)"),
        ("summary.png", True, (2, 2), [panel_accuracy, panel_grad_cos, panel_confidence, panel_mask_change], runs, ""),
    ]
    for name, ok, (nr, nc), panels, rs, why in plans:
        if not ok:
            skipped.append(f"{name} ({why})")
            continue
        fig, axes = plt.subplots(nr, nc, figsize=(5.2 * nc, 3.6 * nr), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            panel(ax, rs)
        save(plt, fig, os.path.join(out, name), dpi)
        written.append(name)
    if mask_picks:
        fig_masks(plt, mask_picks, os.path.join(out, "masks.png"), dpi)
        written.append("masks.png")
    else:
        skipped.append("masks.png (no masks/*.npz: train with --save-masks)")
    return written, skipped


# ----------------------------------------------------------------------------- Comparing runs (--table)
# One markdown table of any run folders: the flags that differ between them (not the
# records config.json adds, nor flags that cannot change results), then last / best /
# validation-selected test accuracy, epochs run and wall time. No matplotlib.

# config.json is train.py's flags plus these records (runfolder.run_meta: the machine and
# versions, the loss's resolved hyper-parameters, the training-set size; runfolder.resume_record:
# a list entry per resume and per --extend). Not flags, so never a column. plot.py stays
# torch-free, so it names them itself; tests/test_plot.py derives them from runfolder.
CONFIG_RECORDS = {"world_size", "device_used", "torch", "numpy", "python", "loss_hparams", "n_train",
                  "resumed", "extended"}
# Flags that cannot change a run's results (checkpoint.NAME_IGNORED | runfolder.CKPT_IGNORED,
# but --epochs, which does: it is a column when it differs; tests/test_plot.py checks the set).
NO_RESULT_FLAGS = {"out", "resume", "auto_resume", "extend", "overwrite", "stop_after", "device", "threads",
                   "decode_workers", "compile", "train_eval_every", "save_masks", "track_grad_error", "list_presets",
                   "download", "mirror"}
NOT_CONFIG = CONFIG_RECORDS | NO_RESULT_FLAGS


def config_differences(configs):
    """Flags whose value differs between the configs (missing counts as a value), sorted;
    NOT_CONFIG keys are left out."""
    keys = sorted(set().union(*configs) - NOT_CONFIG)
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def val_selected(rows):
    """(test_acc, epoch) at the epoch of the highest val_acc_noisy (first on ties), or None
    when the run has no validation split (train.py --val-frac 0)."""
    scored = [r for r in rows if r.get("val_acc_noisy") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["val_acc_noisy"])   # max keeps the first of equal values
    return best["test_acc"], best["epoch"]


def run_summary(run):
    """Accuracies (fractions), epochs and wall time of one read_run() result, from metrics.jsonl."""
    rows = run["rows"]
    best = max(rows, key=lambda r: r["test_acc"])
    return dict(last=rows[-1]["test_acc"], best=(best["test_acc"], best["epoch"]), val=val_selected(rows),
                epochs=(rows[-1]["epoch"], run["config"].get("epochs")),
                wall_s=float(sum(r.get("seconds") or 0.0 for r in rows)))


def _cell(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|")


def _pct(acc_epoch):
    return "–" if acc_epoch is None else f"{100 * acc_epoch[0]:.2f} (ep {acc_epoch[1]})"


def compare_table(runs):
    """Markdown table (str) of read_run() results: run, differing flags, accuracies, epochs run
    (done/planned while unfinished), wall time."""
    keys = config_differences([r["config"] for r in runs])
    head = ["run"] + keys + ["test last %", "test best % (epoch)", "val-selected test % (epoch)", "epochs run", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = run_summary(r)
        done, total = s["epochs"]
        cells = [os.path.basename(os.path.normpath(r["path"]))] + [_cell(r["config"].get(k)) for k in keys]
        cells += [f"{100 * s['last']:.2f}", _pct(s["best"]), _pct(s["val"]),
                  f"{done}" if total in (None, done) else f"{done}/{total}", f"{s['wall_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Main

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by train.py --out")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the run folder when there is one run)")
    p.add_argument("--epochs", default=None, help="epochs of the mask heatmaps, e.g. 1,5,30 (default: first, middle, last saved)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    p.add_argument("--table", action="store_true", help="print one markdown table comparing the runs (flags that differ, "
                   "last/best/validation-selected test accuracy, epochs run, wall time) instead of drawing figures")
    return p


def run(a):
    if a.table:
        print(compare_table([read_run(p) for p in a.runs]))
        return 0
    if a.out is None and len(a.runs) > 1:
        raise PlotError(f"{len(a.runs)} runs share one set of figures: add --out DIR")
    if a.dpi < 10:
        raise PlotError(f"--dpi must be >= 10, got {a.dpi}")
    epochs = parse_epochs(a.epochs)
    runs = labelled([read_run(p) for p in a.runs])
    mask_picks = [(r, mask_epochs(r, epochs)) for r in runs if r["masks"]]  # bad --epochs fail before any drawing
    out = a.out or a.runs[0]
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PlotError(f"--out {out}: cannot create that folder ({e.strerror or e})") from None
    written, skipped = make_figures(runs, out, mask_picks, a.dpi)
    print(f"plot.py: wrote {', '.join(written)} to {out}")
    for s in skipped:
        print(f"plot.py: skipped {s}")
    return 0


def main(argv=None):
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(a)
    except PlotError as e:
        msg = str(e)
        print(msg if msg == MATPLOTLIB_MISSING else f"plot.py: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:   # writing a PNG: a full disk, a folder removed meanwhile
        print(f"plot.py: error: cannot write {e.filename or 'a figure'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
