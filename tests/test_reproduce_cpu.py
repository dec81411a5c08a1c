"""experiments/reproduce_cpu.sh (`make reproduce-cpu`) end to end at smoke size: the judge, stage 1, SDCD
with and without the shuffle, the baselines, the protocol and the table + plot, on 20 Sprites characters."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers.data_files import SHEETS


@pytest.mark.slow
@pytest.mark.skipif(not SHEETS.is_dir(), reason=f"LPC sprite sheets not found at {SHEETS}")
def test_the_sprites_pipeline_runs_end_to_end_and_resumes(tmp_path):
    data = "--data.n_characters=20 --data.val_characters=2"
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "JUDGE": str(tmp_path / "judge.pt"),
           "SEEDS": "0", "BASELINE_SEEDS": "0", "WANDB_MODE": "disabled", "LOGGER": "csv",
           "JUDGE_ARGS": f"{data} --trainer.max_epochs=1",
           "AE_ARGS": f"{data} --trainer.max_epochs=1",
           "ARGS": f"{data} --trainer.max_steps=2 --evaluation.repeats=1",
           "EVAL_ARGS": "--evaluation.repeats=1"}

    (tmp_path / "experiments").symlink_to(ROOT / "experiments")  # run dirs land under tmp_path/runs

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
