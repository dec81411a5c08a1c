"""Compare evaluated runs in one Markdown table.

    python -m sdcd.report runs/dsprites_cond_shuffle/<id> runs/dsprites_cond_noshuffle/<id>
        [--out cmp.md] [--metrics 'swap/acc/*' ...]

Each argument is a run directory (holding metrics.json) or a metrics.json path. metrics.json is what
the evaluation writes into the run directory::

    {"experiment": str, "checkpoint": str,
     "metrics": {"swap/acc/static": {"mean": float, "std": float}, ...}}

Rows are runs, columns the metrics present in any of them (mean ± std; "—" where a run lacks one).
`--by-experiment` makes one row per experiment instead: the mean ± std over its runs (e.g. training
seeds) of each run's mean, with the number of runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from pathlib import Path

from sdcd.io import atomic_write, atomic_write_text
from sdcd.results import (
    MISSING,
    MetricsFileError,
    RunMetrics,
    format_mean_std,
    load_metrics,
    markdown_table,
    metric_names,
)
from sdcd.runs import display_path


def selected_names(runs: list[RunMetrics], patterns: list[str] | None = None) -> list[str]:
    """The metrics to show: all of them, or those that `patterns` (shell-style, e.g. "swap/acc/*") match."""
    names = metric_names(runs)
    if patterns:
        kept = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not kept:
            wanted = " ".join(patterns)
            raise MetricsFileError(f"no metric matches --metrics {wanted}; the runs have: {names}")
        names = kept
    return names


def compare(runs: list[RunMetrics], patterns: list[str] | None = None) -> str:
    """The table; `patterns` (shell-style, e.g. "swap/acc/*") keep only the metrics they match."""
    names = selected_names(runs, patterns)
    rows = []
    for run in runs:
        cells = [format_mean_std(*run.metrics[n]) if n in run.metrics else MISSING for n in names]
        rows.append([display_path(run.run_dir), run.experiment or MISSING, *cells])
    return markdown_table(["run", "experiment", *names], rows)


def by_experiment(runs: list[RunMetrics], names: list[str]) -> dict[str, tuple[int, dict[str, tuple[float, float]]]]:
    """experiment → (number of runs, {metric: (mean, std) over its runs of each run's mean}); std 0 for
    a single run; a metric no run of the experiment has is left out."""
    groups: dict[str, list[RunMetrics]] = {}
    for run in runs:
        groups.setdefault(run.experiment or MISSING, []).append(run)
    out = {}
    for exp, members in groups.items():
        stats = {}
        for n in names:
            vals = [r.metrics[n][0] for r in members if n in r.metrics]
            if vals:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                stats[n] = (mean, std)
        out[exp] = (len(members), stats)
    return out


def compare_by_experiment(runs: list[RunMetrics], patterns: list[str] | None = None) -> str:
    """One row per experiment: mean ± std (over its runs) of each run's mean; std 0 for a single run."""
    names = selected_names(runs, patterns)
    rows = [[exp, str(n), *(format_mean_std(*stats[m]) if m in stats else MISSING for m in names)]
            for exp, (n, stats) in by_experiment(runs, names).items()]
    return markdown_table(["experiment", "runs", *names], rows)


def plot_by_experiment(runs: list[RunMetrics], patterns: list[str] | None, path: Path) -> None:
    """Grouped bars: one group per metric, one bar per experiment (mean ± std over its runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = selected_names(runs, patterns)
    groups = by_experiment(runs, names)
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.3 * len(names) * max(1, len(groups)))), 4.5))
    for k, (exp, (n, stats)) in enumerate(groups.items()):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i, m in enumerate(names) if m in stats]
        ys = [stats[m][0] for m in names if m in stats]
        err = [stats[m][1] for m in names if m in stats]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=f"{exp} ({n})")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("mean ± std over runs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdcd.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or metrics.json files")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--metrics", nargs="+", metavar="PATTERN", help="only these, e.g. 'swap/acc/*'")
    parser.add_argument("--by-experiment", action="store_true",
                        help="one row per experiment: mean ± std over its runs (e.g. seeds)")
    parser.add_argument("--plot", type=Path, help="also draw the by-experiment means ± std as a bar chart (PNG)")
    args = parser.parse_args(argv)
    try:
        runs = [load_metrics(arg) for arg in args.runs]
        table = (compare_by_experiment if args.by_experiment else compare)(runs, args.metrics)
    except MetricsFileError as err:
        print(f"sdcd.report: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    if args.plot:
        plot_by_experiment(runs, args.metrics, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
