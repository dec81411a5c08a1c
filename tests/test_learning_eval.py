"""Issue 3's learning test: the tiny Moving dSprites model trained with the shuffle, scored by its judge.

Slow (minutes on 2 CPU cores). `shuffle_experiment()` is also what produced the shuffle-vs-no-shuffle
comparison quoted in the docs (run `python tests/test_learning_eval.py`).
"""

import json
import sys

import pytest
import torch

from sdcd.cli import main
from sdcd.evaluation import evaluate
from sdcd.judge import load_judge

DATA = ["--data.n_train=4096", "--data.n_val=256", "--data.n_test=512", "--data.batch_size=32"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false"]


def train_judge(path: str, epochs: int = 6) -> None:
    main(["fit", "--config", "experiments/tiny_judge.yaml", f"--model.judge_path={path}",
          f"--trainer.max_epochs={epochs}", *DATA, *QUIET])


def shuffle_experiment(judge_path: str, every: int, steps: int = 1500, repeats: int = 2) -> dict:
    cli = main(["--config", "experiments/tiny.yaml", f"--shuffle.every={every}", f"--trainer.max_steps={steps}",
                "--trainer.max_epochs=-1", "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
                "--trainer.callbacks=[]", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *DATA],
               run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    judge = load_judge(judge_path, cli.datamodule)
    return evaluate(cli.model, cli.datamodule, judge, split="test", repeats=repeats)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-11-27: after 1,500 (and 5,000) CPU steps the tiny model's swap static accuracy is at "
    "chance (21.8%, 23.9%), and the judge scores its plain reconstructions at chance on colour too, so the "
    "tiny decoder does not draw sprites the judge can read; issue 3 stays open until this passes"))
def test_shuffled_tiny_model_disentangles(in_tmp):
    judge_path = str(in_tmp / "judge.pt")
    train_judge(judge_path)
    real = torch.load(judge_path, weights_only=True)["test_scores"]
    assert real["acc/static"] > 0.9, real  # the judge's own accuracy on real test sequences
    res = shuffle_experiment(judge_path, every=1)
    chance_static = (1 / 6 + 1 / 3 + 1 / 6) / 3
    chance_dynamic = (1 / 20 + 1 / 32 + 1 / 32) / 3  # orientation: at best 1/10..1/39 by shape
    assert res["swap/acc/static"]["mean"] > 2.5 * chance_static, res["swap/acc/static"]
    assert res["swap/acc/dynamic"]["mean"] > 3 * chance_dynamic, res["swap/acc/dynamic"]


if __name__ == "__main__":  # the comparison: python tests/test_learning_eval.py [steps]
    import os
    import tempfile

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.symlink(os.path.join(here, "experiments"), "experiments")
        train_judge("judge.pt")
        real = torch.load("judge.pt", weights_only=True)["test_scores"]
        rows = {"judge on real test": {k: v for k, v in real.items() if k.startswith("acc/")}}
        for every in (1, 0):
            res = shuffle_experiment("judge.pt", every, steps)
            rows[f"shuffle.every={every}"] = {k: v["mean"] for k, v in res.items() if k.startswith("swap/acc/")}
        print(json.dumps(rows, indent=1))
