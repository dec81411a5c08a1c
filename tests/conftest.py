import os
from pathlib import Path

import pytest
from helpers.data_files import SHEETS

from sdcd.data_modules.sprites import SpritesDataModule

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONFIGS = ROOT / "tests" / "configs"  # test-only configs (tiny.yaml, tiny_judge.yaml, sweeps/tiny.yaml)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Built datasets (the Sprites cache) go to one temp folder per test session, not ~/.cache."""
    sheets = ROOT.parent / "shared" / "data" / "lpc-sprites"  # the development layout, ../shared beside the repo
    if "SDCD_SPRITES_DIR" not in os.environ and sheets.is_dir():
        os.environ["SDCD_SPRITES_DIR"] = str(sheets)
    if "SDCD_CACHE_DIR" not in os.environ:
        os.environ["SDCD_CACHE_DIR"] = str(tmp_path_factory.mktemp("sdcd-cache"))
    yield


@pytest.fixture
def tiny_model_kwargs() -> dict:
    """The narrow model of tests/configs/tiny.yaml."""
    return dict(n_frames=4, frame_size=32, base_channels=8, latent_dim=16, static_hidden=32, flow_layers=2,
                flow_hidden=32, prior_layers=2, prior_hidden=32, lstm_hidden=32, lstm_layers=1)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temp dir (runs/ lands there) with the repo's experiments and test configs reachable."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(EXPERIMENTS)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "configs").symlink_to(CONFIGS)
    return tmp_path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-character Sprites data module built from the shared LPC sheets (its own cache)."""
    dm = SpritesDataModule(
        batch_size=8, n_characters=3, val_characters=2, sheets_dir=str(SHEETS),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )  # fmt: skip
    dm.setup()
    return dm
