"""experiments/reproduce_cpu.sh (`make reproduce-cpu`) end to end at smoke size: the judge, stage 1, SDCD
with and without the shuffle, the baselines, the protocol and the table + plot, on 20 Sprites characters."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers.data_files import SHEETS


def smoke_env(tmp_path, **overrides):
    """The script's environment at smoke size (20 characters, one epoch or two steps per stage); run dirs
    land under tmp_path/runs."""
    data = "--data.n_characters=20 --data.val_characters=2"
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    return {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "JUDGE": str(tmp_path / "judge.pt"),
            "WANDB_MODE": "disabled", "LOGGER": "csv",
            "JUDGE_ARGS": f"{data} --trainer.max_epochs=1",
            "AE_ARGS": f"{data} --trainer.max_epochs=1",
            "ARGS": f"{data} --trainer.max_steps=2 --evaluation.repeats=1",
            "EVAL_ARGS": "--evaluation.repeats=1", **overrides}


@pytest.mark.slow
@pytest.mark.skipif(not SHEETS.is_dir(), reason=f"LPC sprite sheets not found at {SHEETS}")
def test_the_sprites_pipeline_runs_end_to_end_and_resumes(tmp_path):
    env = smoke_env(tmp_path, SEEDS="0", BASELINE_SEEDS="0")

    def run():
        out = subprocess.run(["bash", "experiments/reproduce_cpu.sh"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=1500)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    run()
    table = (tmp_path / "out" / "table.md").read_text()
    for exp in ("lpc_shuffle_cpu", "lpc_noshuffle_cpu", "lpc_dsvae_cpu", "lpc_dbse_cpu"):
        assert f"| {exp} | 1 |" in table, exp
        assert (tmp_path / "out" / exp / "seed0" / "metrics.json").is_file()
    assert "reconstruction/acc/static" in table and "peers/acc/action" in table
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000
    again = run()  # everything is there: nothing is trained or scored twice
    assert "training" not in again and again.count("skipped") >= 9


def test_an_unknown_stage_config_is_one_line_naming_it(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "AE_EXP": "lpc_autoencoder_nope"}
    out = subprocess.run(["bash", "experiments/reproduce_cpu.sh"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("reproduce-cpu: AE_EXP/SHUFFLE_EXP='lpc_autoencoder_nope': "
                                  "no file experiments/lpc_autoencoder_nope.yaml")
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.skipif(not SHEETS.is_dir(), reason=f"LPC sprite sheets not found at {SHEETS}")
def test_the_one_hour_recipe_runs_its_own_stage_configs_only(tmp_path):
    """`make sprites-hour`: the low-pass stage 1 and the gamma stage 2 at feature noise 0.25, one seed, nothing else."""
    env = smoke_env(tmp_path, RECIPE="hour")  # what the Makefile's sprites-hour target sets
    out = subprocess.run(["bash", "experiments/reproduce_cpu.sh"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ae_config = (tmp_path / "out" / "autoencoder" / "config.yaml").read_text()
    assert "lowpass_weight: 10.0" in ae_config and "autoencoder_frames: 2" in ae_config
    assert "feature_noise: 0.25" in ae_config
    stages = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert stages == ["autoencoder", "lpc_swap_gamma_n25_cpu"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| lpc_swap_gamma_n25_cpu | 1 |" in table and "swap/acc/static" in table


def test_an_unknown_recipe_is_one_line_naming_it(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "RECIPE": "day"}
    out = subprocess.run(["bash", "experiments/reproduce_cpu.sh"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "reproduce-cpu: RECIPE='day': expected hour (or unset)"
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_resumes_from_its_newest_last_checkpoint(tmp_path):
    """A config with a mid-epoch ModelCheckpoint writes last-v1.ckpt every few hundred steps beside the
    epoch-end last.ckpt; an interrupted run must resume from whichever is newer, and the protocol must score
    the newest. The script's Python is a stand-in that records each call, so no model is trained."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    out_dir, judge = tmp_path / "out", tmp_path / "judge.pt"
    judge.write_bytes(b"")  # present: not trained
    stage2 = out_dir / "lpc_swap_gamma_n25_cpu" / "seed42" / "checkpoints"
    stage1 = out_dir / "autoencoder" / "checkpoints"
    for ckpts, newer in ((stage1, "last.ckpt"), (stage2, "last-v1.ckpt")):
        ckpts.mkdir(parents=True)
        older = "last-v1.ckpt" if newer == "last.ckpt" else "last.ckpt"
        (ckpts / older).write_bytes(b"")
        (ckpts / newer).write_bytes(b"")
        os.utime(ckpts / older, (1_000_000, 1_000_000))  # written long before the other
    env = {**os.environ, "PY": str(fake), "OUT": str(out_dir), "JUDGE": str(judge), "RECIPE": "hour"}
    out = subprocess.run(["bash", "experiments/reproduce_cpu.sh"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    fit_ae, fit_s2, test_s2 = calls.read_text().splitlines()[:3]
    assert fit_ae.startswith("-m sdcd fit") and fit_ae.endswith(f"--ckpt_path {stage1 / 'last.ckpt'}")
    assert f"--model.autoencoder_checkpoint={stage1 / 'last.ckpt'}" in fit_s2
    assert fit_s2.endswith(f"--ckpt_path {stage2 / 'last-v1.ckpt'}")
    assert test_s2.startswith("-m sdcd test") and f"--ckpt_path {stage2 / 'last-v1.ckpt'}" in test_s2
