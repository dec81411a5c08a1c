"""W&B sweep files (experiments/sweeps/*.yaml), and running their grid here without a W&B server.

    python -m sdcd.sweeps local experiments/sweeps/<name>.yaml [--dry-run] [-- extra CLI args]

runs every grid point one after the other, each as the command the W&B agent would run (`python -m
sdcd fit --config ... --shuffle.every=2 --seed_everything=1`, then the extra args) in a subprocess
with `WANDB_MODE=offline` unless set, and its run directory fixed through `SDCD_RUN_DIR`. It then reads
the point's `metrics.json` (written by the evaluation) and writes into runs/sweeps/<name>/<timestamp>/:
summary.csv (one row per point), summary.md (by shuffle frequency, mean ± std over seeds, then per
point) and summary.png (static and dynamic accuracy against the shuffle frequency). A point whose run
fails or leaves no metrics.json is reported as failed, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sdcd import runs
from sdcd.io import atomic_write, atomic_write_text
from sdcd.results import MetricsFileError, format_mean_std, load_metrics, markdown_table

SWEEPS_ROOT = Path(runs.RUNS_ROOT) / "sweeps"
SEED_PARAMETER = "seed_everything"
X_PARAMETER = "shuffle.every"
STATIC, DYNAMIC = "swap/acc/static", "swap/acc/dynamic"
POINT_LOG = "sweep_point.log"
SUPPORTED_MACROS = ("${env}", "${interpreter}", "${program}", "${args}")

# (argv, run_dir, env) -> exit code. The default runs a subprocess; tests plug in a fake one.
PointRunner = Callable[[list[str], Path, dict[str, str]], int]


class SweepFileError(ValueError):
    """A sweep file that cannot be run; the message names the file and what was expected."""


@dataclass
class Sweep:
    path: Path
    config: dict

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def parameters(self) -> dict[str, list]:
        """Each parameter's grid values, in file order (`value: x` counts as `values: [x]`)."""
        params = self.config["parameters"]
        return {k: list(v["values"]) if "values" in v else [v["value"]] for k, v in params.items()}

    @property
    def command(self) -> list[str]:
        return [str(c) for c in self.config["command"]]


def load_sweep(path: str | Path) -> Sweep:
    """Reads a sweep file and checks what both `wandb sweep` and the local runner rely on."""
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: no such sweep file (expected experiments/sweeps/<name>.yaml)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepFileError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise SweepFileError(f"{path}: expected a mapping with program, method, metric, parameters, command")
    if config.get("method") != "grid":
        raise SweepFileError(
            f"{path}: method must be 'grid' (the local runner expands grids), got {config.get('method')!r}"
        )
    if not isinstance(config.get("program"), str):
        raise SweepFileError(
            f"{path}: 'program' must name what ${{program}} stands for (here the module: sdcd)"
        )
    metric = config.get("metric")
    if not (
        isinstance(metric, dict) and metric.get("name") and metric.get("goal") in ("maximize", "minimize")
    ):
        raise SweepFileError(f"{path}: 'metric' must have a name and goal: maximize|minimize, got {metric!r}")
    params = config.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepFileError(
            f"{path}: 'parameters' must map parameter names to {{values: [...]}} or {{value: x}}"
        )
    for name, spec in params.items():
        ok = isinstance(spec, dict) and (
            isinstance(spec.get("values"), list) and spec["values"] or "value" in spec
        )
        if not ok:
            raise SweepFileError(
                f"{path}: parameters.{name} must be {{values: [non-empty list]}} or {{value: x}}; got {spec}"
            )
    command = config.get("command")
    if not (isinstance(command, list) and all(isinstance(c, (str, int, float)) for c in command)):
        raise SweepFileError(f"{path}: 'command' must be a block list of strings")
    if "${args}" not in command:
        raise SweepFileError(
            f"{path}: 'command' must contain ${{args}} (the --name=value flags LightningCLI parses)"
        )
    for item in command:
        if str(item).startswith("${") and item not in SUPPORTED_MACROS:
            raise SweepFileError(
                f"{path}: command item {item} is not supported; use one of {SUPPORTED_MACROS}"
            )
    return Sweep(path, config)


def grid_points(sweep: Sweep) -> list[dict]:
    """Every combination of the parameter values, the first parameter varying slowest."""
    names = list(sweep.parameters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*sweep.parameters.values())]


def point_args(point: dict) -> list[str]:
    """What W&B's `${args}` expands to: `--name=value`, the value as Python's str()."""
    return [f"--{name}={value}" for name, value in point.items()]


def point_command(
    sweep: Sweep, point: dict, extra_args: Sequence[str] = (), interpreter: str = sys.executable
) -> list[str]:
    """The agent's command for one point, run by this interpreter; `extra_args` go last, so they win."""
    argv: list[str] = []
    for item in sweep.command:
        if item == "${env}":
            continue  # /usr/bin/env for the agent; the subprocess gets its env directly
        argv += {
            "${interpreter}": [interpreter],
            "${program}": [sweep.config["program"]],
            "${args}": point_args(point),
        }.get(item, [item])
    return argv + list(extra_args)


def point_label(point: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def point_dirname(index: int, point: dict) -> str:
    """`03-every2-seed1`: the index keeps grid order, the rest says which point it is."""
    short = {SEED_PARAMETER: "seed"}
    parts = [f"{short.get(k, k.rsplit('.', 1)[-1])}{v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join([f"{index:02d}", *parts]))


def subprocess_runner(argv: list[str], run_dir: Path, env: dict[str, str]) -> int:
    """Runs one point, its output going to <run dir>/sweep_point.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / POINT_LOG, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        return subprocess.run(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        ).returncode


@dataclass
class PointResult:
    index: int
    point: dict
    run_dir: Path
    ok: bool = False
    error: str = ""
    seconds: float = 0.0
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


def run_point(
    sweep: Sweep, index: int, point: dict, out_dir: Path, extra_args: Sequence[str], runner: PointRunner
) -> PointResult:
    run_dir = out_dir / "points" / point_dirname(index, point)
    result = PointResult(index, point, run_dir)
    env = {**os.environ, runs.RUN_DIR_ENV: str(run_dir)}
    env.setdefault("WANDB_MODE", "offline")
    start = time.monotonic()
    try:
        code = runner(point_command(sweep, point, extra_args), run_dir, env)
    except Exception as err:  # a broken runner must not stop the sweep either
        code, result.error = None, f"runner raised {type(err).__name__}: {err}"
    result.seconds = time.monotonic() - start
    if code is not None and code != 0:
        result.error = f"run exited with code {code} (log: {runs.display_path(run_dir / POINT_LOG)})"
    elif code == 0:
        try:
            result.metrics = load_metrics(run_dir / "metrics.json").metrics
            result.ok = True
        except MetricsFileError as err:
            result.error = str(err)
    return result


# ---------------------------------------------------------------------------------------------- summary


def _metric_names(results: list[PointResult]) -> list[str]:
    names: dict[str, None] = {}
    for r in results:
        names.update(dict.fromkeys(r.metrics))
    return list(names)


def summary_csv(sweep: Sweep, results: list[PointResult]) -> str:
    names = _metric_names(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "point",
            "status",
            *sweep.parameters,
            *(f"{n}{s}" for n in names for s in ("", "_std")),
            "seconds",
            "run_dir",
            "error",
        ]
    )
    for r in results:
        values = [x for n in names for x in (r.metrics.get(n) or ("", ""))]
        writer.writerow(
            [
                r.index,
                "ok" if r.ok else "failed",
                *r.point.values(),
                *values,
                f"{r.seconds:.1f}",
                runs.display_path(r.run_dir),
                r.error,
            ]
        )
    return out.getvalue()


def by_x(sweep: Sweep, results: list[PointResult], metric: str) -> dict:
    """x value -> (mean, std, n) of `metric` over the points that have it (seeds and other parameters)."""
    x_name = x_parameter(sweep)
    table = {}
    for x in sweep.parameters[x_name]:
        values = [r.metrics[metric][0] for r in results if r.point[x_name] == x and metric in r.metrics]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[x] = (statistics.fmean(values), std, len(values))
    return table


def x_parameter(sweep: Sweep) -> str:
    """The plot's x axis: shuffle.every, else the first parameter that is not the seed."""
    names = list(sweep.parameters)
    if X_PARAMETER in names:
        return X_PARAMETER
    return next((n for n in names if n != SEED_PARAMETER), names[0])


def summary_markdown(sweep: Sweep, results: list[PointResult], extra_args: Sequence[str], total: int) -> str:
    x_name = x_parameter(sweep)
    names = _metric_names(results)
    n_ok = sum(r.ok for r in results)
    command = " ".join(point_command(sweep, {k: f"<{k}>" for k in sweep.parameters}, extra_args, "python"))
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"- sweep file: `{runs.display_path(sweep.path)}`; metric: `{sweep.config['metric']['name']}` "
        f"({sweep.config['metric']['goal']})",
        f"- command: `{command}`",
        f"- points: {len(results)} of {total} run, {n_ok} ok, {len(results) - n_ok} failed",
        "",
    ]
    if names:
        lines += [f"## By {x_name} (mean ± std over the points that finished)", ""]
        rows = []
        for x in sweep.parameters[x_name]:
            n_x = sum(r.point[x_name] == x for r in results)
            cells = []
            for name in names:
                stats = by_x(sweep, results, name).get(x)
                cells.append(format_mean_std(*stats[:2]) if stats else "—")
            done = sum(r.ok and r.point[x_name] == x for r in results)
            rows.append([x, f"{done}/{n_x}", *cells])
        lines += [markdown_table([x_name, "ok", *names], rows), ""]
    lines += ["## Points", ""]
    rows = [
        [
            r.index,
            point_label(r.point),
            "ok" if r.ok else "**failed**",
            *(format_mean_std(*r.metrics[n]) if n in r.metrics else "—" for n in names),
            runs.display_path(r.run_dir) if r.ok else r.error,
        ]
        for r in results
    ]
    lines += [markdown_table(["#", "point", "status", *names, "run dir / error"], rows)]
    return "\n".join(lines)


def summary_plot(sweep: Sweep, results: list[PointResult], path: Path) -> None:
    """Static and dynamic accuracy (mean ± std over seeds) against the x parameter, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name = x_parameter(sweep)
    xs = sweep.parameters[x_name]
    labels = [f"{x}\n(never)" if x_name == X_PARAMETER and x == 0 else str(x) for x in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for metric, label in ((STATIC, "static accuracy"), (DYNAMIC, "dynamic accuracy")):
        stats = by_x(sweep, results, metric)
        pos = [i for i, x in enumerate(xs) if x in stats]
        if pos:
            means = [stats[xs[i]][0] for i in pos]
            stds = [stats[xs[i]][1] for i in pos]
            ax.errorbar(pos, means, yerr=stds, marker="o", capsize=4, label=label)
            drawn = True
    if drawn:
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            "no point has finished with a metrics.json yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xticks(range(len(xs)), labels)
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(f"{x_name} (shuffle every n-th step)" if x_name == X_PARAMETER else x_name)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title(f"sweep {sweep.name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_summary(
    sweep: Sweep,
    results: list[PointResult],
    out_dir: Path,
    extra_args: Sequence[str],
    total: int,
    plot: bool = True,
) -> None:
    atomic_write_text(out_dir / "summary.csv", summary_csv(sweep, results))
    atomic_write_text(out_dir / "summary.md", summary_markdown(sweep, results, extra_args, total))
    if plot:
        summary_plot(sweep, results, out_dir / "summary.png")


# ---------------------------------------------------------------------------------------------- driver


def run_local(
    sweep: Sweep,
    extra_args: Sequence[str] = (),
    out_root: str | Path = SWEEPS_ROOT,
    runner: PointRunner = subprocess_runner,
    echo: Callable[[str], None] = print,
) -> tuple[Path, list[PointResult]]:
    """Runs every grid point in turn; the summary is rewritten after each point (the plot at the end)."""
    points = grid_points(sweep)
    out_dir = Path(out_root) / sweep.name / runs.new_run_id()
    out_dir.mkdir(parents=True)
    where = f"{runs.display_path(sweep.path)} -> {runs.display_path(out_dir)}"
    echo(f"sdcd.sweeps: {len(points)} points of {where}")
    results: list[PointResult] = []
    started = time.monotonic()
    try:
        for index, point in enumerate(points):
            echo(f"[{index + 1}/{len(points)}] {point_label(point)} ...")
            result = run_point(sweep, index, point, out_dir, extra_args, runner)
            results.append(result)
            elapsed = time.monotonic() - started
            eta = elapsed / len(results) * (len(points) - len(results))
            status = "ok" if result.ok else f"FAILED: {result.error}"
            shown = ", ".join(
                f"{n} {m:.4f}" for n, (m, _) in result.metrics.items() if n in (STATIC, DYNAMIC)
            )
            shown = f"; {shown}" if shown else ""
            echo(f"    {status} in {result.seconds:.0f} s{shown}; about {eta:.0f} s left")
            write_summary(sweep, results, out_dir, extra_args, len(points), plot=False)
    finally:  # also on Ctrl-C: the points done so far are summarised
        write_summary(sweep, results, out_dir, extra_args, len(points))
        failed = sum(not r.ok for r in results)
        echo(
            f"sdcd.sweeps: {len(results) - failed} ok, {failed} failed; summary in "
            f"{runs.display_path(out_dir)}/summary.{{md,csv,png}}"
        )
    return out_dir, results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m sdcd.sweeps",
        description=__doc__.split("\n\n")[0],
        epilog="Extra CLI args for every point go after `--`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="run a sweep's grid here, one point after the other, without W&B")
    local.add_argument("sweep_file", type=Path)
    local.add_argument("--out-root", type=Path, default=SWEEPS_ROOT, help="default: %(default)s")
    local.add_argument("--dry-run", action="store_true", help="print each point's command and stop")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file)
    except SweepFileError as err:
        print(f"sdcd.sweeps: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for point in grid_points(sweep):
            print(" ".join(point_command(sweep, point, extra)))
        return 0
    try:
        _, results = run_local(sweep, extra, args.out_root)
    except KeyboardInterrupt:
        return 130
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
