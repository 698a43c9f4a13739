"""Tables of the round-two accuracy grids (where does DCM help?): training length (FC vs
DFC at 15/40/80 epochs), KAN heads at longer training, the sparse-mask x interval
sweep chosen on the noisy validation split, and the cnn8 backbone (at a CPU budget: bench/accuracy.py CNN_BUDGET). Runs come from bench/accuracy.py ROUND2;
`python -m bench accuracy --grid round2 --table-only --out-md FILE` writes the section.

Every table reports three test accuracies per run: `last` (last epoch), `best` (the
test-best epoch, as papers report it: it peeks at the test set) and `val-sel` (test
accuracy at the epoch of the highest noisy-label validation accuracy: the honest early
stop a practitioner can do).
"""
from bench import accuracy as acc
from bench import report

FIELDS = ("last", "best", "valsel", "val")


def load_run(record, argv=None):
    """A packed run (bench/pack.py record, or None) -> dict(last, best, valsel, val, val_epoch)
    in percent, or None (no record, or stale: report.load_result).

    valsel: test accuracy at the first epoch of maximal val_acc_noisy (the noisy-label
    validation accuracy); val: that maximal validation accuracy."""
    base = report.load_result(record, argv)
    if base is None:
        return None
    scored = [r for r in record["metrics"] if r.get("val_acc_noisy") is not None]
    if not scored:
        return dict(base, valsel=None, val=None, val_epoch=None)
    pick = max(scored, key=lambda r: (r["val_acc_noisy"], -r["epoch"]))
    return dict(base, valsel=100 * pick["test_acc"], val=100 * pick["val_acc_noisy"], val_epoch=pick["epoch"])


def cell(flags, results):
    """One setting -> ({field: (n, mean, std)}, run keys in seed order)."""
    keys = [acc.make_run(dict(flags, seed=s)).key for s in acc.SEEDS]
    done = [results[k] for k in keys if results.get(k)]
    return {f: report.stats([r[f] for r in done]) for f in FIELDS}, keys


def compare(a, b, results, field):
    """b − a for one field: 'Δ (paired t, verdict)' over the seeds both finished."""
    (sa, ka), (sb, kb) = a, b
    if not (sa[field][0] and sb[field][0]):
        return "—"
    diff = sb[field][1] - sa[field][1]
    t, verdict = report.paired_t(ka, kb, results, field)
    return f"{diff:+.2f}" + ("" if t is None else f" (t {t:+.1f}, {verdict})")


def settings(common, name):
    """{row label: flags} of round-two table `name` for each loss -> {(loss, label): flags}."""
    return {(loss, label): flags for (_, loss, label), flags in acc.round2_settings(common, (name,))}


def length_rows(common, results):
    flags = settings(common, "training length")
    rows = []
    for loss in acc.ROUND2["training length"][0]:
        for rate in (0.6, 0.8):
            for ep in acc.LENGTHS:
                fc, dfc = (cell(flags[(loss, f"{h}, sym {rate:g}, {ep} ep")], results) for h in ("fc", "dfc"))
                row = [loss, f"sym {rate:g}", str(ep), f"{fc[0]['last'][0]}/{dfc[0]['last'][0]}"]
                for field in ("last", "best", "valsel"):
                    row += [report.fmt_ms(fc[0][field]), report.fmt_ms(dfc[0][field]), compare(fc, dfc, results, field)]
                rows.append(row)
    return rows


LENGTH_HEADER = ("loss", "noise", "epochs", "n (FC/DFC)", "last: FC", "last: DFC", "last: Δ (paired t)",
                 "best: FC", "best: DFC", "best: Δ", "val-sel: FC", "val-sel: DFC", "val-sel: Δ (paired t)")


def kan_rows(common, results):
    """CE, sym 0.6: FC (from the length grid) vs KAN vs DKAN at 15 (main grid) / 40 / 80 epochs."""
    rows = []
    for ep in acc.LENGTHS:
        at = dict(common, noise="symmetric", noise_rate=0.6, loss="ce", epochs=ep)
        fc, kan_, dkan = (cell(dict(at, head=h), results) for h in ("fc", "kan", "dkan"))
        row = [str(ep), f"{fc[0]['last'][0]}/{kan_[0]['last'][0]}/{dkan[0]['last'][0]}"]
        for field in ("last", "valsel"):
            row += [report.fmt_ms(fc[0][field]), report.fmt_ms(kan_[0][field]), report.fmt_ms(dkan[0][field]),
                    compare(fc, kan_, results, field), compare(kan_, dkan, results, field)]
        rows.append(row)
    return rows


KAN_HEADER = ("epochs", "n (FC/KAN/DKAN)", "last: FC", "last: KAN", "last: DKAN", "last: KAN − FC",
              "last: DKAN − KAN", "val-sel: FC", "val-sel: KAN", "val-sel: DKAN", "val-sel: KAN − FC",
              "val-sel: DKAN − KAN")


def sweep_tables(common, results):
    """Per loss: keep x interval matrix of val-sel test accuracy, and the validation pick vs FC."""
    name = "keep x interval (40 ep)"
    flags = settings(common, name)
    keeps, intervals = (0.01, 0.02, 0.05, 0.1), (1, 10, 50, 200)
    out = []
    for loss in acc.ROUND2[name][0]:
        fc = cell(flags[(loss, "fc (no DCM)")], results)
        cells = {(k, t): cell(flags[(loss, f"keep {k:g}, interval {t}")], results) for k in keeps for t in intervals}
        header = ("keep \\ interval", *map(str, intervals))
        rows = [[f"{k:g}", *(f"{report.fmt_ms(cells[(k, t)][0]['valsel'])} (val {report.fmt_ms(cells[(k, t)][0]['val'])})"
                             for t in intervals)] for k in keeps]
        scored = {kt: c[0]["val"][1] for kt, c in cells.items() if c[0]["val"][0] == len(acc.SEEDS)}
        out += ["", f"#### {loss}: test accuracy at the validation-selected epoch (val = its noisy-label "
                    f"validation accuracy), FC: {report.fmt_ms(fc[0]['valsel'])} (val {report.fmt_ms(fc[0]['val'])})",
                "", report.md_table(header, rows), ""]
        if scored:
            k, t = max(scored, key=scored.get)
            pick = cells[(k, t)]
            out.append(f"- Chosen on the noisy validation split (highest mean val, all {len(acc.SEEDS)} seeds): "
                       f"keep {k:g}, interval {t}: val-sel test {report.fmt_ms(pick[0]['valsel'])}, last "
                       f"{report.fmt_ms(pick[0]['last'])}; against FC: val-sel Δ {compare(fc, pick, results, 'valsel')}, "
                       f"last Δ {compare(fc, pick, results, 'last')}.")
        else:
            out.append("- No keep/interval cell has all seeds yet: no validation pick.")
    return out


def cnn_rows(common, results):
    """cnn8 backbone, sym 0.6: FC vs DFC, KAN vs DKAN and FC vs KAN per loss; last, best, val-selected."""
    name = "CNN backbone (cnn8, sym 0.6)"
    flags = settings(common, name)
    rows = []
    for loss in acc.ROUND2[name][0]:
        for base, other in (("fc", "dfc"), ("kan", "dkan"), ("fc", "kan")):
            a, b = cell(flags[(loss, base)], results), cell(flags[(loss, other)], results)
            rows.append([loss, f"{base} → {other}", f"{a[0]['last'][0]}/{b[0]['last'][0]}",
                         *(x for field in ("last", "best", "valsel") for x in (
                             report.fmt_ms(a[0][field]), report.fmt_ms(b[0][field]), compare(a, b, results, field)))])
    return rows


CNN_HEADER = ("loss", "first → second", "n", "last: first", "last: second", "last: Δ (paired t)",
              "best: first", "best: second", "best: Δ (paired t)",
              "val-sel: first", "val-sel: second", "val-sel: Δ (paired t)")


def cnn_budget_text(common):
    """The cnn8 table's paragraph, from the budget the runs actually used (acc.CNN_BUDGET, which
    GPU users empty; its flags over common's)."""
    flags = {**common, **acc.CNN_BUDGET}
    epochs = flags.get("epochs", "train.py's default")
    if not acc.CNN_BUDGET:
        return (f"No CPU budget (bench/accuracy.py CNN_BUDGET is empty): --limit-train {flags.get('limit_train', 0)} "
                f"(0 = all; 10 % of it the noisy validation split), {epochs} epochs, the full test set.")
    train, test = flags.get("limit_train", 0), acc.CNN_BUDGET.get("limit_test")
    no_pass = acc.CNN_BUDGET.get("train_eval_every") == 0
    return (f"The 2-core CPU budget (bench/accuracy.py CNN_BUDGET): --limit-train {train} "
            f"(10 % of it the noisy validation split), {epochs} epochs, "
            + (f"--limit-test {test} (one class-stratified test subset for every run)" if test else "the full test set")
            + (", no per-epoch pass over the training set" if no_pass else "")
            + ". On a GPU, drop these limits and rerun `python -m bench accuracy --grid cnn`.")


def section(common, packed, title):
    """The round-two markdown section (starts with title) from the packed runs ({key: record})."""
    runs = acc.plan(list(acc.round2_settings(common, acc.ROUND2)), acc.SEEDS)
    runs += [acc.make_run(dict(common, noise="symmetric", noise_rate=0.6, loss="ce", epochs=15, head=h, seed=s))
             for h in ("kan", "dkan") for s in acc.SEEDS]
    argv = {r.key: r.argv for r in runs}
    results = {k: load_run(packed.get(k), a) for k, a in argv.items()}
    done = sum(r is not None for r in results.values())
    return "\n".join([
        title, "",
        f"- Runs finished: {done} of {len(results)} (seeds {', '.join(map(str, acc.SEEDS))}); other flags as the "
        f"main grid (`python train.py {' '.join(acc.train_argv(common))}`), a row's --epochs stretches the "
        "cosine schedule over the longer run.",
        "- Test accuracy in %, mean ± std over seeds. `last`: last epoch; `best`: test-best epoch (peeks at the "
        "test set); `val-sel`: the epoch of highest noisy-label validation accuracy (10 % of the noisy training "
        "set held out): the honest early-stopped number.",
        "- Δ = second − first, with the paired t over seeds and its verdict at 5 % (4.30 for 3 seeds): better / "
        "worse / no.", "",
        "### Training length (FC vs DFC, keep 0.1, mask every step)", "",
        report.md_table(LENGTH_HEADER, length_rows(common, results)), "",
        "### KAN heads at longer training (CE, sym 0.6)", "",
        report.md_table(KAN_HEADER, kan_rows(common, results)), "",
        "### Sparse masks x long intervals (DFC, sym 0.6, 40 epochs)",
        *sweep_tables(common, results), "",
        "### CNN backbone (cnn8, sym 0.6" + (", at a CPU budget)" if acc.CNN_BUDGET else ")"), "",
        cnn_budget_text(common), "",
        report.md_table(CNN_HEADER, cnn_rows(common, results)), ""])
