"""`isara report RUN`: report.md and PNG plots of one run.

metrics.png  each compare.json metric per ISARA iteration (0 = pretrained) against the baselines,
             when RUN/compare/compare.json (or --compare) exists; bars and bands: 95% intervals
check.png    the built-in check per iteration (iter_t/metrics.json), with 95% Wilson intervals
samples.png  candidates generated, kept, and how many failed each filter, per iteration
loss.png     training loss per step, one line per iteration (iter_t/train.json)
"""

from __future__ import annotations

import json
from pathlib import Path

from .compare import cell_rows
from .errors import IsaraError
from .evaluation.check import CHECK_TITLE, check_rows
from .evaluation.tables import BY_NAME, annotate, legend, markdown, md_table, table
from .files import atomic_write_text
from .filters import FILTERS
from .loop import iteration_rows
from .rundir import RunDir
from .stats import stored_ci
from .ui import UI

BASELINE_STYLE = {"sft-seeds": ("tab:orange", "--"), "icl-knn": ("tab:green", "-."),
                  "icl-random": ("tab:purple", ":"), "one-shot": ("tab:red", (0, (5, 2, 1, 2)))}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise IsaraError(f"{path}: unreadable ({e})") from None


def load_run(run: Path) -> tuple[list[dict], dict[int, list[float]]]:
    """(metrics.json of every finished iteration incl. 0, {iteration: training losses})."""
    rd = RunDir(run).require()
    its = rd.finished()
    if not its:
        raise IsaraError(f"{run}: no finished iteration (no iter_*/metrics.json)")
    rows = [_read(rd.it(t) / "metrics.json") for t in its]
    losses = {t: _read(rd.it(t) / "train.json").get("losses", []) for t in its if (rd.it(t) / "train.json").is_file()}
    return rows, losses


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(compare: dict, path: Path) -> None:
    """One panel per metric: the ISARA line over iterations, each baseline a horizontal line."""
    plt = _plt()
    rows = {r["row"]: r for r in compare["rows"]}
    isara = sorted((int(k.split("-")[1]), r) for k, r in rows.items() if k.startswith("isara-"))
    cols = compare["columns"]
    ncol = min(2, len(cols))
    nrow = (len(cols) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.6 * nrow), squeeze=False)
    last = max([t for t, _ in isara] or [1])
    for ax, col in zip(axes.flat, cols):
        scale = 100 if BY_NAME[col].kind == "pct" else 1

        def val(r):
            v = r["values"].get(col)
            return None if v is None else v * scale

        def ci(r):  # the 95% interval, scaled; None where there is none
            c = r.get("intervals", {}).get(col)
            return None if c is None or val(r) is None else (c[0] * scale, c[1] * scale)

        line = ([rows["pretrained"]] if "pretrained" in rows else []) + [r for _, r in isara]
        xs = ([0] if "pretrained" in rows else []) + [t for t, _ in isara]
        if xs:
            ys, below, above = [], [], []
            for r in line:
                y, c = val(r), ci(r)
                ys.append(float("nan") if y is None else y)
                # never negative: a percentile interval can miss its own mean by a rounding error
                below.append(max(0.0, y - c[0]) if c else 0.0)
                above.append(max(0.0, c[1] - y) if c else 0.0)
            ax.errorbar(xs, ys, yerr=[below, above], fmt="o-", color="tab:blue", linewidth=2, capsize=3,
                        label="ISARA (0 = pretrained)")
        for name, (color, style) in BASELINE_STYLE.items():
            if name in rows and val(rows[name]) is not None:
                ax.axhline(val(rows[name]), color=color, linestyle=style, linewidth=1.5, label=rows[name]["label"])
                if ci(rows[name]):
                    ax.axhspan(*ci(rows[name]), color=color, alpha=0.08, linewidth=0)
        ax.set_title(col, fontsize=11)
        ax.set_xlabel("ISARA iteration")
        ax.set_ylabel("%" if scale == 100 else "score")
        ax.set_xticks(range(0, last + 1))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(f"{compare.get('recipe', '')}: metrics per iteration vs baselines", fontsize=12)
    fig.tight_layout(rect=(0, 0.1 if nrow == 1 else 0.06, 1, 0.97))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps outside legends and titles whole
    plt.close(fig)


def plot_check(rows: list[dict], path: Path) -> bool:
    plt = _plt()
    pts = [(r["iteration"], r["check"]) for r in rows if r.get("check")]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [t for t, _ in pts]
    for key, n, style, label in (
            ("harmful_refused", "n_harmful", "o-", "held-out harmful: refused (higher is better)"),
            ("benign_answered", "n_benign", "s--", "held-out benign: answered (higher is better)")):
        ys = [100 * c[key] for _, c in pts]
        cis = [stored_ci(c, key, c[n]) or [c[key], c[key]] for _, c in pts]  # the 95% Wilson interval
        ax.errorbar(xs, ys, yerr=[[max(0.0, y - 100 * lo) for y, (lo, _) in zip(ys, cis)],
                                  [max(0.0, 100 * hi - y) for y, (_, hi) in zip(ys, cis)]],
                    fmt=style, capsize=3, label=label)
    ax.set_xticks(xs)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("ISARA iteration (0 = base model)")
    ax.set_ylabel("%")
    n = pts[0][1]
    ax.set_title(f"built-in check ({n['n_harmful']} harmful + {n['n_benign']} benign prompts, greedy)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps outside legends and titles whole
    plt.close(fig)
    return True


def plot_samples(rows: list[dict], path: Path) -> None:
    plt = _plt()
    its = [r for r in rows if r["iteration"] > 0]
    bars = [("generated", lambda r: r["generated"])] + [("kept", lambda r: r["kept"])] + \
           [(f"failed: {f}", lambda r, f=f: r["removed"].get(f, 0)) for f in FILTERS]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(its) + 3), 4))
    width = 0.8 / len(bars)
    for i, (name, get) in enumerate(bars):
        xs = [r["iteration"] + (i - (len(bars) - 1) / 2) * width for r in its]
        ys = [get(r) for r in its]
        b = ax.bar(xs, ys, width, label=name)
        ax.bar_label(b, fontsize=8, padding=1)
    ax.set_xticks([r["iteration"] for r in its])
    ax.set_xlabel("ISARA iteration")
    ax.set_ylabel("candidates")
    ax.set_title("candidates per iteration (a candidate can fail several filters)", fontsize=11)
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps outside legends and titles whole
    plt.close(fig)


def plot_loss(losses: dict[int, list[float]], path: Path) -> None:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for t, ls in sorted(losses.items()):
        ax.plot(range(1, len(ls) + 1), ls, "o-" if len(ls) < 30 else "-", markersize=3, label=f"iteration {t}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step (within the iteration)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("training loss per step", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps outside legends and titles whole
    plt.close(fig)


def report(run: Path, compare_dir: Path | None = None, out: Path | None = None, ui: UI | None = None) -> Path:
    ui = ui or UI()
    run = Path(run)
    rows, losses = load_run(run)
    out = Path(out or run / "report")
    out.mkdir(parents=True, exist_ok=True)
    cpath = Path(compare_dir or run / "compare") / "compare.json"
    if compare_dir is not None and not cpath.is_file():
        raise IsaraError(f"{cpath}: no such file (run `isara compare` first)")
    compare = _read(cpath) if cpath.is_file() and not _read(cpath).get("domains") else None
    its = [r for r in rows if r["iteration"] > 0]

    md = [f"# ISARA run report: {run}", ""]
    if its:
        ui.table("ISARA iterations", *iteration_rows(its))
        md += ["## Samples per iteration", ""]
        md += md_table(*iteration_rows(its))
        plot_samples(rows, out / "samples.png")
        md += ["", "A candidate can fail several filters, so the failed counts can add up to more than "
                   "generated - kept.", "", "![samples](samples.png)", ""]
    checks = [r["check"] for r in rows if r.get("check")]
    if checks:
        ui.table(CHECK_TITLE, *check_rows(checks), caption="in brackets: the 95% Wilson interval")
        md += [f"## {CHECK_TITLE}", ""]
        md += md_table(*check_rows(checks))
        plot_check(rows, out / "check.png")
        md += ["", "In brackets: the 95% Wilson interval.", "", "![check](check.png)", ""]
    if compare:
        if any("intervals" not in r for r in compare["rows"]):  # compare.json from before the intervals
            annotate(compare, cell_rows(cpath.parent))
        ui.console.print(table(compare, f"compare ({cpath})"))
        for line in legend(compare):
            ui.log(line)
        sizes = "; ".join(f"{s}: {v}" for s, v in compare["n"].items())
        md += ["## Evaluation against the baselines", "", *markdown(compare)]
        plot_metrics(compare, out / "metrics.png")
        md += ["", f"From {cpath}. Items per set: {sizes}; greedy, {compare['max_tokens']} tokens.",
               "", "![metrics](metrics.png)", ""]
    else:
        md += ["No compare.json: run `isara compare` for the evaluation suites against the baselines; "
               "the built-in check above is the per-iteration metric.", ""]
    if losses:
        plot_loss(losses, out / "loss.png")
        md += ["## Training loss", "", "![loss](loss.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    ui.log(f"report: {out / 'report.md'}")
    return out / "report.md"
