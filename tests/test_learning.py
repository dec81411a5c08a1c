"""Learning on the tiny CPU config: a short training run must really reconstruct the sprites."""

import torch

from sdcd.cli import main


def test_tiny_training_reduces_reconstruction_error(in_tmp):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster and immune to a busy machine
    try:
        _train_and_check()
    finally:
        torch.set_num_threads(threads)


def _train_and_check():
    cli = main(["--config", "tests/configs/tiny.yaml", "--trainer.max_steps=500", "--trainer.max_epochs=-1",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
                "--data.n_train=2048", "--data.n_val=128"], run=False)
    dm, model, trainer = cli.datamodule, cli.model, cli.trainer
    dm.setup("fit")
    x = dm.batch("val", torch.arange(128))["x"]
    black = (x**2).flatten(1).sum(1).mean().item()  # SSE of predicting an empty (black) frame

    def val_sse():
        torch.manual_seed(1)  # same feature noise before and after
        model.eval()
        with torch.no_grad():
            return model.loss_terms(x, shuffle=False)["sse"].item()

    before = val_sse()
    trainer.fit(model, dm)
    after = val_sse()
    assert trainer.global_step == 500
    assert after < 0.05 * before, (before, after)
    # better than drawing nothing: the sprites themselves are reconstructed, not just the background
    assert after < 0.9 * black, (black, after)
