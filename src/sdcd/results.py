"""Evaluation results on disk: writing `metrics.json` / `metrics.md` into a run directory, reading
them back (checked, with errors that name the file), and the Markdown tables of both.

metrics.json::

    {"experiment": str, "checkpoint": str, "split": str, "repeats": int, "judge": str, ...,
     "metrics": {"swap/acc/static": {"mean": float, "std": float}, ...}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from sdcd.io import atomic_write_text

TESTS = ("reconstruction", "reconstruction_mean", "swap", "swap_mean", "sample_dynamics", "sample_dynamics_mean",
         "sample_static", "paired")

# What each test is about: the keys shown in tables (all keys are logged and written to metrics.json).
HEADLINE = {
    "reconstruction": ["acc/static", "acc/dynamic"],
    "reconstruction_mean": ["acc/static", "acc/dynamic"],
    "swap": ["acc/static", "acc/dynamic", "intervention"],
    "swap_mean": ["acc/static", "acc/dynamic"],
    "sample_dynamics": ["acc/static", "intervention"],
    "sample_dynamics_mean": ["acc/static", "intervention"],
    "sample_static": ["acc/dynamic", "intervention"],
    "paired": ["acc/static", "acc/dynamic", "intervention"],
}

METRICS_FILE = "metrics.json"
MISSING = "—"


class MetricsFileError(ValueError):
    """A metrics.json that is missing or not in the expected shape; the message names the file."""


@dataclass
class RunMetrics:
    path: Path  # the metrics.json file
    experiment: str
    checkpoint: str
    metrics: dict[str, tuple[float, float]]  # name -> (mean, std)

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricsFileError(f"{where}: expected a number, got {value!r}")
    return float(value)


def load_metrics(arg: str | Path) -> RunMetrics:
    """Reads and checks one metrics.json (or the one in a run directory)."""
    arg = Path(arg)
    path = arg / METRICS_FILE if arg.is_dir() else arg
    if not path.is_file():
        if path.name != METRICS_FILE or not path.parent.is_dir():
            raise MetricsFileError(f"{arg}: no such run directory or metrics.json file")
        raise MetricsFileError(
            f"{path}: not found; the evaluation writes it into the run dir "
            "(`sdcd test`, or `sdcd fit --test_after_fit=true`, with evaluation.judge_path set)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetricsFileError(f"{path}: not valid JSON ({err})") from None
    expected = '{"experiment": str, "checkpoint": str, "metrics": {name: {"mean": float, "std": float}}}'
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise MetricsFileError(f"{path}: expected an object {expected}")
    metrics = {}
    for name, value in data["metrics"].items():
        if not isinstance(value, dict) or "mean" not in value or "std" not in value:
            raise MetricsFileError(
                f'{path}: metrics["{name}"] should be {{"mean": float, "std": float}}, got {value!r}'
            )
        where = f'{path}: metrics["{name}"]'
        metrics[name] = (_number(value["mean"], f"{where}.mean"), _number(value["std"], f"{where}.std"))
    return RunMetrics(path, str(data.get("experiment", "")), str(data.get("checkpoint", "")), metrics)


def format_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{mean:.4f} ± {std:.4f}"


def metric_names(runs: list[RunMetrics]) -> list[str]:
    """Every metric present in any run, in first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.metrics))
    return list(names)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)]) + "\n"


def headline_table(results: dict[str, dict[str, float]], title: str = "") -> str:
    """Headline metrics per test as a Markdown table (percentages for accuracies)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| test | metric | mean | std |", "| --- | --- | ---: | ---: |"]
    for test, keys in HEADLINE.items():
        for k in keys:
            v = results.get(f"{test}/{k}")
            if v is not None:
                lines.append(f"| {test} | {k} | {100 * v['mean']:.2f}% | {100 * v['std']:.2f} |")
    for k, v in results.items():
        if k.startswith("peers/"):
            pct = "/acc/" in k
            mean = f"{100 * v['mean']:.2f}%" if pct else f"{v['mean']:.4g}"
            std = f"{100 * v['std']:.2f}" if pct else f"{v['std']:.2g}"
            lines.append(f"| peers | {k.removeprefix('peers/')} | {mean} | {std} |")
    return "\n".join(lines) + "\n"


def per_factor_table(results: dict[str, dict[str, float]], factors) -> str:
    """Accuracy of every factor under every test (Markdown)."""
    tests = [t for t in TESTS if f"{t}/acc/{factors[0].name}" in results]
    lines = ["| factor | kind | " + " | ".join(tests) + " |", "| --- | --- |" + " ---: |" * len(tests)]
    for f in factors:
        cells = [f"{100 * results[f'{t}/acc/{f.name}']['mean']:.2f}%" for t in tests]
        lines.append(f"| {f.name} | {'static' if f.static else 'dynamic'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def probe_table(results: dict[str, dict[str, float]], factors) -> str:
    """Linear-probe accuracy of every factor from f (mean, sample) and the time-mean of λ (Markdown), or ""."""
    if f"probe/f/{factors[0].name}" not in results:
        return ""
    lines = ["| linear probe (train → test) | " + " | ".join(f.name for f in factors) + " |",
             "| --- |" + " ---: |" * len(factors)]
    rows = [("f", "from the static code f"), ("lam", "from the time-mean of λ"),
            ("f_sample", "from a sample of q(f|x)")]
    for code, what in rows:
        if f"probe/{code}/{factors[0].name}" not in results:  # f_sample: metrics written before it existed
            continue
        cells = [f"{100 * results[f'probe/{code}/{f.name}']['mean']:.2f}%" for f in factors]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, results: dict, factors, meta: dict) -> tuple[Path, Path]:
    """`metrics.json` (all metrics, mean ± std) and `metrics.md` (readable tables) in `run_dir`."""
    run_dir = Path(run_dir)
    json_path, md_path = run_dir / "metrics.json", run_dir / "metrics.md"
    atomic_write_text(json_path, json.dumps({**meta, "metrics": results}, indent=2, sort_keys=True) + "\n")
    title = f"{meta.get('experiment', '')} — {meta.get('checkpoint', '')}".strip(" —")
    md = headline_table(results, title) + "\n" + per_factor_table(results, factors)
    probes = probe_table(results, factors)
    md += "\n" + probes if probes else ""
    md += f"\n{meta.get('repeats', '?')} repeats over the {meta.get('split', 'test')} split; mean ± std over repeats.\n"
    atomic_write_text(md_path, md)
    return json_path, md_path
