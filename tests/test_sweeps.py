"""Sweep files: valid for W&B, every grid point parses with the CLI; the local runner and its summary."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, EXPERIMENTS, ROOT
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from sdcd import sweeps
from sdcd.cli import main

SWEEP_FILES = sorted((EXPERIMENTS / "sweeps").glob("*.yaml"))
TINY_SWEEP = CONFIGS / "sweeps" / "tiny.yaml"
SMALL_DATA = [
    "--data.batch_size=4",
    "--data.eval_batch_size=4",
    "--data.n_train=16",
    "--data.n_val=4",
    "--data.n_test=4",
]


def agent_command(sweep: sweeps.Sweep, point: dict) -> list[str]:
    """The command `wandb agent` would run for this point, expanded with wandb's own helper."""
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep.config["program"]])
    argv = []
    for item in sweep.command:
        argv += sweep_vars[item[2:-1]] if item.startswith("${") else [item]
    return argv


def cli_args(argv: list[str]) -> list[str]:
    """What follows the `fit` subcommand: what `main(..., run=False)` takes."""
    return argv[argv.index("fit") + 1 :]


def experiment_of(sweep: sweeps.Sweep) -> Path:
    command = sweep.command
    return ROOT / command[command.index("--config") + 1]


def test_every_experiment_sets_an_explicit_seed():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        seed = yaml.safe_load(path.read_text()).get("seed_everything")
        assert isinstance(seed, int) and not isinstance(seed, bool), (
            f"{path.name}: seed_everything must be an int"
        )


def test_there_are_sweeps_for_sprites_and_moving_dsprites():
    configs = {experiment_of(sweeps.load_sweep(p)).name for p in SWEEP_FILES}
    assert {"lpc_shuffle.yaml", "dsprites_cond_shuffle.yaml"} <= configs


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_is_what_wandb_and_lightningcli_need(path):
    sweep = sweeps.load_sweep(path)
    assert sweep.config["metric"] == {"name": "eval/swap/acc/static_plus_dynamic", "goal": "maximize"}
    assert sweep.config["program"] == "sdcd"
    assert sweep.command[:6] == ["${env}", "${interpreter}", "-m", "${program}", "fit", "--config"]
    assert "${args}" in sweep.command and "--test_after_fit=true" in sweep.command
    assert "--trainer.logger=true" in sweep.command  # W&B logging even where the YAML names another logger
    assert "\ncommand:\n  - ${env}\n" in path.read_text(), (
        "command must be a block list (flow lists break PyYAML)"
    )
    assert 0 in sweep.parameters["shuffle.every"] and 1 in sweep.parameters["shuffle.every"]
    assert len(sweep.parameters["seed_everything"]) >= 2


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_point_reaches_the_callback_and_the_seed(path, in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = sweeps.load_sweep(path)
    if not experiment_of(sweep).is_file():
        pytest.skip(f"{experiment_of(sweep).relative_to(ROOT)} is not written yet")
    points = sweeps.grid_points(sweep)
    assert len(points) == len(sweep.parameters["shuffle.every"]) * len(sweep.parameters["seed_everything"])
    for point in points:
        expected = agent_command(sweep, point)
        assert sweeps.point_command(sweep, point, interpreter="python") == expected[1:]  # local == agent
        cli = main(cli_args(expected), run=False)
        (shuffle,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "ShuffleCallback"]
        assert shuffle.every == point["shuffle.every"]
        assert cli.config["seed_everything"] == point["seed_everything"]
        assert cli.config["test_after_fit"] is True


@pytest.mark.parametrize(
    "name", ["tiny", pytest.param("shuffle_frequency_dsprites", marks=pytest.mark.slow)]  # full size: ~30 s
)
def test_one_point_fits_with_fast_dev_run_then_tests(name, in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = sweeps.load_sweep((CONFIGS if name == "tiny" else EXPERIMENTS) / "sweeps" / f"{name}.yaml")
    argv = agent_command(sweep, sweeps.grid_points(sweep)[-1])
    # no judge file exists here: the point is the fit → test chaining (evaluation without judge metrics)
    fast = ["--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", "--evaluation.judge_path=null", *SMALL_DATA]
    cli = main(["fit", *cli_args(argv), *fast])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.trainer.state.fn == "test"  # --test_after_fit ran the evaluation after fit


# ---------------------------------------------------------------------------------------------- local runner


def fake_runner(calls: list):
    """Writes a metrics.json whose accuracies depend on the point; (every=1, seed=1) crashes."""

    def run(argv, run_dir, env):
        calls.append((argv, run_dir, env))
        every = int(next(a for a in argv if a.startswith("--shuffle.every=")).split("=")[1])
        seed = int(next(a for a in argv if a.startswith("--seed_everything=")).split("=")[1])
        if (every, seed) == (1, 1):
            return 1
        run_dir.mkdir(parents=True)
        metrics = {
            "swap/acc/static": {"mean": 0.5 + 0.4 * every + 0.01 * seed, "std": 0.01},
            "swap/acc/dynamic": {"mean": 0.6 + 0.02 * seed, "std": 0.02},
        }
        (run_dir / "metrics.json").write_text(
            json.dumps({"experiment": "tiny", "checkpoint": "x.ckpt", "metrics": metrics})
        )
        return 0

    return run


def test_sweep_local_writes_csv_markdown_and_plot(in_tmp, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    calls = []
    extra = ["--trainer.max_steps=2"]
    out_dir, results = sweeps.run_local(
        sweeps.load_sweep(TINY_SWEEP), extra, in_tmp / "runs" / "sweeps", runner=fake_runner(calls)
    )
    assert out_dir.parent == in_tmp / "runs" / "sweeps" / "tiny"
    # each point: the agent's command plus the extra args, its own run dir, W&B offline
    assert [c[0][-3:] for c in calls][0] == [
        "--shuffle.every=0",
        "--seed_everything=0",
        "--trainer.max_steps=2",
    ]
    assert all(
        env["SDCD_RUN_DIR"] == str(run_dir) and env["WANDB_MODE"] == "offline" for _, run_dir, env in calls
    )
    assert len({str(run_dir) for _, run_dir, _ in calls}) == 4

    rows = list(csv.DictReader((out_dir / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert [(r["shuffle.every"], r["seed_everything"]) for r in rows] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    assert (
        float(rows[2]["swap/acc/static"]) == pytest.approx(0.9) and rows[2]["swap/acc/static_std"] == "0.01"
    )
    assert "exited with code 1" in rows[3]["error"]

    md = (out_dir / "summary.md").read_text()
    assert (
        "## By shuffle.every" in md
        and "| 0 | 2/2 | 0.5050 ± 0.0071 |" in md
        and "| 1 | 1/2 | 0.9000 ± 0.0000 |" in md
    )
    assert "**failed**" in md and "4 of 4 run, 3 ok, 1 failed" in md
    assert (out_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "[4/4] shuffle.every=1 seed_everything=1" in out and "FAILED" in out


def test_a_point_without_metrics_json_is_reported_failed(in_tmp):
    def no_metrics(argv, run_dir, env):
        run_dir.mkdir(parents=True)
        return 0

    out_dir, results = sweeps.run_local(
        sweeps.load_sweep(TINY_SWEEP), (), in_tmp / "sw", runner=no_metrics, echo=lambda s: None
    )
    assert not any(r.ok for r in results) and all("metrics.json: not found" in r.error for r in results)
    assert "4 of 4 run, 0 ok, 4 failed" in (out_dir / "summary.md").read_text()
    assert (out_dir / "summary.png").is_file()


def test_sweeps_cli_dry_run_prints_each_point(capsys):
    assert sweeps.main(["local", str(TINY_SWEEP), "--dry-run", "--", "--trainer.max_steps=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.endswith("--trainer.max_steps=2") for line in lines)
    assert lines[0].startswith(
        f"{sys.executable} -m sdcd fit --config tests/configs/tiny.yaml --trainer.logger=true"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such sweep file"),
        ("method: grid\nprogram: sdcd\ncommand: [ ${env}, ${args} ]\n", "not valid YAML"),
        ("method: bayes\n", "method must be 'grid'"),
        (
            "method: grid\nprogram: sdcd\nmetric: {name: m, goal: maximize}\nparameters: {a: {values: [1]}}\n"
            "command:\n  - ${env}\n  - ${args_no_hyphens}\n",
            "must contain ${args}",
        ),
        (
            "method: grid\nprogram: sdcd\nmetric: {name: m, goal: maximize}\nparameters: {a: {values: []}}\n"
            "command:\n  - ${args}\n",
            "parameters.a must be",
        ),
    ],
)
def test_bad_sweep_files_are_named_in_the_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    assert sweeps.main(["local", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


@pytest.mark.slow
def test_sweep_local_runs_the_real_cli(in_tmp):
    """The real runner on the 2 × 2 tiny grid: every point trains; without a judge, no metrics.json yet."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdcd.sweeps",
            "local",
            str(TINY_SWEEP),
            "--",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    (out_dir,) = (in_tmp / "runs" / "sweeps" / "tiny").iterdir()
    rows = list(csv.DictReader((out_dir / "summary.csv").open()))
    assert len(rows) == 4, proc.stdout[-3000:]
    for row in rows:
        run_dir = in_tmp / row["run_dir"]
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file(), row
        if (
            row["status"] == "failed"
        ):  # the run itself must have worked; only the evaluation output is missing
            assert "metrics.json" in row["error"] and "exited" not in row["error"], row
    assert (out_dir / "summary.md").is_file() and (out_dir / "summary.png").is_file()
