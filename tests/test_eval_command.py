"""`make eval CKPT=…` runs the full protocol on a checkpoint and writes metrics.json / metrics.md into
the checkpoint's run directory. The judge here is untrained (a plumbing test: the numbers are not
asserted, only that every test of the protocol ran and was written)."""

import json
import os
import subprocess

import torch
from conftest import ROOT

from sdcd.cli import main
from sdcd.judge import Judge, data_signature, save_judge


def test_make_eval_writes_metrics_into_the_run_dir(in_tmp):
    run_dir = in_tmp / "runs" / "tiny" / "run-a"
    os.environ["SDCD_RUN_DIR"] = str(run_dir)
    try:
        cli = main(["fit", "--config", "tests/configs/tiny.yaml", "--trainer.max_steps=2",
                    "--trainer.limit_val_batches=0",
                    "--trainer.callbacks=[]", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                    "--trainer.callbacks.save_last=true", "--trainer.callbacks+=sdcd.callbacks.visual.VisualCallback"])
    finally:
        del os.environ["SDCD_RUN_DIR"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "config.yaml").is_file()

    torch.manual_seed(0)
    judge = Judge(cli.datamodule.factors, frame_size=32, base_channels=8, embed_dim=16, hidden_size=16, head_hidden=16)
    judge_path = in_tmp / "judge.pt"
    save_judge(judge, judge_path, data_signature(cli.datamodule))

    env = {**os.environ, "WANDB_MODE": "disabled", "LOGGER": "csv"}
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "eval", f"CKPT={ckpt}",
                          f"ARGS=--evaluation.judge_path={judge_path} --evaluation.repeats=2 "
                          "--trainer.enable_progress_bar=false"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((run_dir / "metrics.json").read_text())
    assert data["repeats"] == 2 and data["checkpoint"].endswith("last.ckpt")
    for test in ("swap", "sample_dynamics", "sample_static", "paired"):
        assert 0.0 <= data["metrics"][f"{test}/acc/static"]["mean"] <= 1.0
        assert data["metrics"][f"{test}/n/sequences"]["mean"] == 32  # the whole tiny test split
    assert "| swap | acc/static |" in (run_dir / "metrics.md").read_text()
    for code in ("f", "lam", "f_sample"):  # the linear probes, fit on train codes, scored on test
        for f in cli.datamodule.factors:
            assert 0.0 <= data["metrics"][f"probe/{code}/{f.name}"]["mean"] <= 1.0
    assert "| from the static code f |" in (run_dir / "metrics.md").read_text()
    assert "| from a sample of q(f|x) |" in (run_dir / "metrics.md").read_text()
    assert 0.0 <= data["metrics"]["sample_dynamics_mean/acc/static"]["mean"] <= 1.0
    assert (run_dir / "pictures" / "swap_test.png").is_file()  # the pictures land there too


def test_make_eval_without_a_checkpoint_is_a_clear_error(tmp_path):
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "eval", f"CKPT={tmp_path}/nope.ckpt"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "does not exist" in out.stderr and "nope.ckpt" in out.stderr
