"""Tables of the mechanism grid (is it the score or the sparsity?): every head of
bench/accuracy.py MECHANISM_ROWS at CE sym 0.8 / 0.6 and ANL-CE sym 0.8, 15 and 40 epochs, and
the contrasts (Eq. 2's score against a random mask of the same size, against each of its two
factors alone, and against dropout), with the paired t over seeds; the Fig. 3 gradient error per
head, and its figure. `python -m bench accuracy --grid mechanism --table-only --out-md
bench/README.md` rewrites the tables' section; the verdict drawn from them ("Is it the score or
the sparsity?") is a hand-written section of bench/README.md that this leaves alone.
"""
import os

from bench import accuracy as acc
from bench import report
from bench import round2

TITLE = "## Accuracy, mechanism ablations: the tables"
FIGURE = os.path.join("results", "mechanism-grad-error.png")
FIELDS = ("last", "best", "valsel")
# (first, second): second − first is the contrast's Δ
CONTRASTS = (("DFC random", "DFC std (Eq. 2)"), ("DFC magnitude", "DFC std (Eq. 2)"),
             ("DFC feature", "DFC std (Eq. 2)"), ("FC + head dropout 0.5", "DFC std (Eq. 2)"),
             ("FC", "DFC random"), ("FC", "FC + head dropout 0.5"),
             ("DFC random, interval 50", "DFC std, interval 50"), ("DKAN random", "DKAN std (Eq. 2)"),
             ("KAN", "DKAN random"))


def grid(common):
    """{(loss, rate, epochs, row label): flags} of --grid mechanism."""
    return dict(acc.mechanism_settings(common))


def cells(common, results):
    """{(loss, rate, epochs, label): round2.cell(...)}: per-field (n, mean, std) and the run keys."""
    return {k: round2.cell(flags, results) for k, flags in grid(common).items()}


def head_table(c, loss, rate, ep, results):
    """Rows of one setting: every head, last / best / val-sel, Δ against FC (paired t)."""
    fc = c[(loss, rate, ep, "FC")]
    rows = []
    for label in acc.MECHANISM_ROWS:
        x = c[(loss, rate, ep, label)]
        rows.append([label, str(x[0]["last"][0]), report.fmt_ms(x[0]["last"]),
                     "" if label == "FC" else round2.compare(fc, x, results, "last"), report.fmt_ms(x[0]["best"]),
                     report.fmt_ms(x[0]["valsel"]), "" if label == "FC" else round2.compare(fc, x, results, "valsel")])
    return rows


HEAD_HEADER = ("head", "n", "last", "last: Δ vs FC (paired t)", "best", "val-sel", "val-sel: Δ vs FC (paired t)")


def contrast_rows(c, results):
    """One row per setting x contrast: second − first for last / best / val-sel."""
    rows = []
    for loss, rate in acc.MECHANISM_SETTINGS:
        for ep in acc.MECHANISM_LENGTHS:
            for first, second in CONTRASTS:
                a, b = c[(loss, rate, ep, first)], c[(loss, rate, ep, second)]
                rows.append([f"{loss}, sym {rate:g}, {ep} ep", f"{second} − {first}",
                             *(round2.compare(a, b, results, f) for f in FIELDS)])
    return rows


CONTRAST_HEADER = ("setting", "contrast", "last: Δ (paired t)", "best: Δ (paired t)", "val-sel: Δ (paired t)")


def grad_error_rows(common, packed, loss="ce", rate=0.8, ep=40):
    """Fig. 3 per head at one setting, mean over seeds: the probe's feature-gradient error norm and
    the cosine of noisy vs clean feature gradients, averaged over epochs 1-5 (before memorisation)
    and at the last epoch."""
    rows = []
    for label, flags in grid(common).items():
        if label[:3] != (loss, rate, ep):
            continue
        recs = [packed.get(acc.make_run(dict(flags, seed=s)).key) for s in acc.SEEDS]
        recs = [r for r in recs if r is not None]

        def mean_of(key, last):
            vals = [m[key] for r in recs for m in (r["metrics"][-1:] if last else r["metrics"])
                    if (last or m["epoch"] <= 5) and m.get(key) is not None]
            return f"{sum(vals) / len(vals):.3f}" if vals else "—"
        rows.append([label[3], str(len(recs)), mean_of("grad_err_feat_norm", False), mean_of("grad_err_feat_norm", True),
                     mean_of("grad_cos_feat", False), mean_of("grad_cos_feat", True)])
    return rows


GRAD_HEADER = ("head", "n", "‖feature-gradient error‖, epochs 1-5", "… last epoch",
               "cos(noisy, clean) feature gradient, epochs 1-5", "… last epoch")


def figure(common, packed, path=FIGURE, loss="ce", rate=0.8, ep=40, seed=0, dpi=110):
    """The Fig. 3 curves of every head at one setting and seed, two panels; -> path, or None when
    matplotlib is missing or no run is packed."""
    import plot
    runs = []
    for label, flags in grid(common).items():
        rec = packed.get(acc.make_run(dict(flags, seed=seed)).key) if label[:3] == (loss, rate, ep) else None
        if rec is not None:
            style = "--" if "interval" in label[3] else "-"
            runs.append({"label": label[3], "rows": rec["metrics"], "style": style})
    if not runs:
        return None
    try:
        plt = plot.load_pyplot()
    except plot.PlotError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, key, ylabel in ((axes[0], "grad_err_feat_norm", "mean ‖∇ᵥL(ỹ) − ∇ᵥL(y)‖ (probe)"),
                            (axes[1], "grad_cos_feat", "mean cos(∇ᵥL(ỹ), ∇ᵥL(y))")):
        for i, r in enumerate(runs):
            x, y = plot.series(r["rows"], key)
            ax.plot(x, y, r["style"], color=f"C{i % 10}", label=r["label"])
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Fig. 3 per head: {loss}, sym {rate:g}, {ep} epochs, seed {seed}", fontsize=10)
    axes[1].legend(fontsize=7)
    plot.save(plt, fig, path, dpi)
    return path


def section(common, packed, title=TITLE):
    """The mechanism section's tables (markdown, starts with title) from the packed runs."""
    runs = acc.plan(list(acc.mechanism_settings(common)), acc.SEEDS)
    results = {r.key: round2.load_run(packed.get(r.key), r.argv) for r in runs}
    c = cells(common, results)
    done = sum(v is not None for v in results.values())
    out = [title, "",
           f"- Runs finished: {done} of {len(results)} (seeds {', '.join(map(str, acc.SEEDS))}); Fashion-MNIST, mlp "
           f"backbone, the 20k subset, keep 0.1, mask every step unless a row says interval 50; flags as the main "
           f"grid (`python train.py {' '.join(acc.train_argv(common))}`) plus the row's.",
           "- Like for like: every score keeps DCM's k per class (no rescaling of the kept weights), runs DCM's "
           "schedule and evaluates with the full head; only what ranks the edges changes (`--dcm-score`: std = "
           "Eq. 2 |W|·std_b v, magnitude = |W|, feature = std_b v for every class, random = a random k-subset per "
           "class redrawn at every update). Head dropout 0.5 is standard dropout on the head's input (FC head).",
           "- Test accuracy in %, mean ± std over seeds; `last`, `best` (test-best epoch: peeks at the test set), "
           "`val-sel` (epoch of highest noisy-label validation accuracy: the honest early stop). Δ with the paired "
           "t over seeds and its verdict at 5 % (|t| > 4.30 for 3 seeds).", ""]
    for loss, rate in acc.MECHANISM_SETTINGS:
        for ep in acc.MECHANISM_LENGTHS:
            out += [f"### {loss}, sym {rate:g}, {ep} epochs", "",
                    report.md_table(HEAD_HEADER, head_table(c, loss, rate, ep, results)), ""]
    out += ["### The contrasts (second − first)", "", report.md_table(CONTRAST_HEADER, contrast_rows(c, results)), "",
            "### Gradient error per head (Fig. 3; ce, sym 0.8, 40 epochs, mean over seeds)", "",
            report.md_table(GRAD_HEADER, grad_error_rows(common, packed)), "",
            f"Curves for seed 0: `{FIGURE}` (`python -m bench accuracy --grid mechanism --table-only` redraws it).", ""]
    return "\n".join(out)
