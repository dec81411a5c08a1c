"""What the Sprites diagnostics of bench/ share: the test split and a trained SDCD checkpoint (and a judge)."""

from __future__ import annotations


def load_test_run(checkpoint: str, judge: str | None = None):
    """(the Sprites DataModule set up for its test split, the SDCD of `checkpoint` in eval mode on the
    CPU, the judge file's judge or None), with the split the protocol uses (50 held-out characters)."""
    from sdcd.data_modules.sprites import SpritesDataModule
    from sdcd.judge import load_judge
    from sdcd.model import SDCD

    dm = SpritesDataModule(eval_batch_size=128, val="holdout", val_characters=50)
    dm.setup("test")
    model = SDCD.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    return dm, model, None if judge is None else load_judge(judge, dm, map_location="cpu").eval()
