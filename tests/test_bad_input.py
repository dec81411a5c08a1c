"""Bad input gets one clear error that names the thing and what was expected, and leaves no partial file.

Each item of the list, end to end through the public entry points (the CLI `main([...])`, or the data
module API for data that the CLI only reaches after a long build). Already covered elsewhere, not
repeated here:
- truncated / corrupted Sprites cache rebuilt: test_sprites.py::test_truncated_or_corrupted_cache_is_rebuilt
- tampered or missing sprite sheets: test_sprites.py::test_tampered_or_missing_sheets_are_rejected;
  a failed download writes nothing: test_sprites.py::test_download_with_a_wrong_file_writes_nothing
- peers' npy files missing, of the wrong shape, not one-hot, truncated, mis-scaled, or holding test
  characters: test_sprites.py::test_npy_layout_errors_name_the_file
- video files corrupt, empty, not a video or shorter than a clip: skipped with one warning naming each,
  test_video.py::test_bad_files_are_skipped_warned_and_counted; failing mid-decode:
  test_video.py::test_decode_failure_loses_only_its_clips_and_is_counted and
  ::test_corrupt_frame_in_a_folder_loses_only_the_clips_from_there; no usable clip, missing root,
  zero frames, no batch: test_video.py::test_folder_without_usable_clip_is_a_clear_error
- `make train EXP=<unknown>`: test_cli.py::test_make_train_runs_and_rejects_unknown_experiments
- an unknown model override: test_cli.py::test_unknown_override_is_a_clear_error
- model and data disagreeing on frames: test_cli.py::test_shape_mismatch_between_model_and_data_is_named
- crash while checkpointing, checkpoints of another experiment or model config, `--ckpt_path`
  values: test_checkpointing.py
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest
import torch
from helpers.data_files import SHEETS, copy_sheets, write_valid_npy, write_video
from PIL import Image

from sdcd.cli import main
from sdcd.data_modules import sprites_io as S
from sdcd.data_modules.dsprites import MovingDSpritesDataModule
from sdcd.data_modules.sprites import SpritesDataModule
from sdcd.data_modules.video_io import VideoSkipWarning
from sdcd.judge import Judge, data_signature, save_judge

needs_sheets = pytest.mark.skipif(not SHEETS.is_dir(), reason=f"LPC sprite sheets not found at {SHEETS}")
TINY = ["--config", "tests/configs/tiny.yaml"]
QUICK = ["--trainer.fast_dev_run=true", "--trainer.accelerator=cpu"]


def nothing_half_written(root) -> None:
    """No temp file or hidden partial file anywhere below `root` (the `experiments` link aside)."""
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".part"))]
    assert not leftovers, leftovers


def first_line(err: pytest.ExceptionInfo) -> str:
    return str(err.value).splitlines()[0]


# -- the Sprites cache and sheets -----------------------------------------------------------------------
@needs_sheets
def test_a_sprites_cache_missing_its_manifest_or_an_array_is_rebuilt(tmp_path, monkeypatch, caplog):
    builds, render = [], S.render_sequences
    monkeypatch.setattr(S, "render_sequences", lambda *a, **k: builds.append(1) or render(*a, **k))
    kw = dict(sheets_dir=str(SHEETS), cache_dir=str(tmp_path), n_characters=1, val_characters=1)

    def load() -> torch.Tensor:
        dm = SpritesDataModule(**kw)
        dm.setup()
        return dm.batch("test", torch.arange(dm.split_size("test")))["x"]

    first = load()
    cache = SpritesDataModule(**kw).cache_path
    (cache / "manifest.json").unlink()  # killed after writing the arrays, before the manifest
    assert torch.equal(load(), first) and len(builds) == 4 and (cache / "manifest.json").is_file()
    (cache / "manifest.json").write_text('{"files": ')  # a manifest cut short
    with caplog.at_level(logging.WARNING, logger="sdcd.data_modules.sprites"):
        assert torch.equal(load(), first) and len(builds) == 6
    assert f"Ignoring the Sprites cache in {cache}" in caplog.text and "rebuilding it" in caplog.text
    (cache / "test_x.npy").unlink()
    assert torch.equal(load(), first) and len(builds) == 8
    nothing_half_written(tmp_path)


@needs_sheets
def test_a_sprite_sheet_of_the_wrong_size_fails_its_checksum_and_is_named(tmp_path):
    sheets = copy_sheets(tmp_path / "sheets")
    Image.open(sheets / "body/0.png").resize((416, 672)).save(sheets / "body/0.png")
    dm = SpritesDataModule(sheets_dir=str(sheets), n_characters=1, val_characters=1,
                           cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError) as err:
        dm.setup()
    msg = str(err.value)
    assert f"LPC sprite sheets in {sheets} failed verification" in msg
    assert "body/0.png: SHA-256" in msg and "does not match the expected" in msg
    assert "original: https://raw.githubusercontent.com/YingzhenLi/Sprites/master/body/0.png" in msg
    assert not (tmp_path / "c").exists()  # nothing cached from bad sheets
    # the decoder's own size check, for a sheet that would pass a checksum
    with pytest.raises(ValueError, match=r"sprite sheet body/0.png: size \(416, 672\), expected 832×1344"):
        S.decode_sheet((sheets / "body/0.png").read_bytes(), "body/0.png")
    nothing_half_written(tmp_path)


# -- the peers' npy files: wrong dtypes (shapes: test_sprites.py) ---------------------------------------
@needs_sheets
@pytest.mark.parametrize(
    "name, bad, expected",
    [
        ("sprites_X_train.npy", lambda a: (a * 256).astype(np.uint8), "float32 array (N, 8, 64, 64, 3)"),
        ("sprites_A_test.npy", lambda a: a.astype(str), "one-hot array (N, 8, 4, 6)"),
        ("sprites_D_train.npy", lambda a: a.astype(object), "not a readable .npy file"),
    ],
    ids=["X-uint8", "A-strings", "D-objects"],
)
def test_peers_npy_of_a_wrong_dtype_is_named(small, tmp_path, name, bad, expected):  # noqa: F811
    folder = write_valid_npy(small, tmp_path / "npy")
    np.save(folder / name, bad(np.load(folder / name)), allow_pickle=True)
    with pytest.raises(ValueError) as err:
        SpritesDataModule(npy_dir=str(folder), n_characters=3, val_characters=2).setup()
    msg = str(err.value)
    assert msg.startswith(str(folder / name)) and expected in msg


@needs_sheets
def test_bad_npy_through_the_cli(small, in_tmp):  # noqa: F811
    folder = write_valid_npy(small, in_tmp / "npy")
    np.save(folder / "sprites_X_test.npy", np.zeros((27, 8, 3, 64, 64), np.float32))  # channels first
    with pytest.raises(ValueError) as err:
        main(["fit", "--config", "experiments/lpc_shuffle.yaml", *QUICK, f"--data.npy_dir={folder}",
              "--data.n_characters=3", "--data.val_characters=2", "--data.batch_size=4",
              "--data.eval_batch_size=4"])
    msg = first_line(err)
    assert msg.startswith(f"{folder / 'sprites_X_test.npy'}: float32 array of shape (27, 8, 3, 64, 64)")
    assert "expected a float32 array (N, 8, 64, 64, 3)" in msg
    nothing_half_written(in_tmp)


# -- a video folder with nothing usable, through the CLI ------------------------------------------------
def test_a_video_folder_of_bad_files_is_one_clear_error(in_tmp):
    root = in_tmp / "videos"
    root.mkdir()
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "empty.webm").write_bytes(b"")
    (root / "notes.txt").write_text("not a video\n")
    write_video(root / "short.mp4", 5)  # shorter than a clip of 8 frames
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError) as err:
        warnings.simplefilter("always")
        main(["fit", "--config", "experiments/video_shuffle.yaml", *QUICK, f"--data.root={root}",
              "--data.num_workers=0"])
    skipped = [str(w.message) for w in caught if issubclass(w.category, VideoSkipWarning)]
    for name in ("corrupt.mp4", "empty.webm", "notes.txt", "short.mp4"):  # one warning each, naming it
        assert sum(name in m for m in skipped) == 1, (name, skipped)
    msg = first_line(err)
    assert f"data.root={str(root)!r} has no usable clip" in msg
    assert "at least 8 frames each (n_frames=8" in msg
    assert "unreadable: 2" in msg and "too_short: 1" in msg and "not_a_video: 1" in msg
    nothing_half_written(in_tmp)


# -- experiment names and overrides ---------------------------------------------------------------------
def test_an_unknown_experiment_config_is_named(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "experiments/no_such_exp.yaml"])
    err = capsys.readouterr().err
    assert "experiments/no_such_exp.yaml" in err and "does not exist" in err
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("override, named", [
    ("--data.n_trian=5", "Option 'n_trian' is not accepted"),
    ("--shuffle.evry=2", "unrecognized arguments: --shuffle.evry=2"),
    ("--trainer.max_epochz=2", "unrecognized arguments: --trainer.max_epochz=2"),
    ("--nonsense=1", "unrecognized arguments: --nonsense=1"),
])
def test_an_override_of_a_parameter_that_does_not_exist_is_named(in_tmp, capsys, override, named):
    with pytest.raises(SystemExit):
        main(["fit", *TINY, override])
    err = capsys.readouterr().err
    assert named in err and "--help" in err  # the tip lists the accepted options
    assert not (in_tmp / "runs").exists()


# -- impossible values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    pytest.param("--shuffle.every=-1", "ShuffleCallback.every must be ≥ 0 (0 = never shuffle), got -1",
                 id="negative-shuffle-frequency"),
    pytest.param("--shuffle.warmup_steps=-5", "ShuffleCallback.warmup_steps must be ≥ 0, got -5",
                 id="negative-warmup"),
    pytest.param("--data.batch_size=512", "data.batch_size=512 is larger than the train split "
                 "(256 sequences) with drop_last=True", id="batch-larger-than-data"),
    pytest.param("--data.n_frames=0", "data.n_frames must be an integer >= 2", id="zero-frames-data"),
    pytest.param("--model.n_frames=0", "model.n_frames must be positive", id="zero-frames-model"),
    pytest.param("--data.n_train=0", "data.n_train must be a positive integer, got 0",
                 id="empty-train-split"),
    pytest.param("--data.frame_size=4", "data.frame_size must be an integer >= 8, got 4", id="tiny-frames"),
    pytest.param("--evaluation.every_n_epochs=-1", "evaluation.every_n_epochs must be ≥ 0",
                 id="negative-eval-every"),
])
def test_an_impossible_value_is_one_clear_error(in_tmp, override, message):
    with pytest.raises(ValueError) as err:
        main(["fit", *TINY, *QUICK, override])
    assert first_line(err).startswith(message)
    nothing_half_written(in_tmp)


# -- a judge for other data -----------------------------------------------------------------------------
def test_a_judge_for_other_data_is_refused_naming_the_difference(in_tmp):
    args = dict(n_train=256, n_val=32, n_test=32, n_frames=4, frame_size=32, seed=0)
    other = MovingDSpritesDataModule(variant="simple", **args)  # tiny.yaml's data is the cond variant
    torch.manual_seed(0)
    judge = Judge(other.factors, frame_size=32, base_channels=4, embed_dim=8, hidden_size=8, head_hidden=8)
    save_judge(judge, in_tmp / "judges" / "simple.pt", data_signature(other))
    with pytest.raises(ValueError) as err:
        main(["test", *TINY, *QUICK, "--evaluation.judge_path=judges/simple.pt"])
    msg = str(err.value)
    assert msg.startswith("judge 'judges/simple.pt' was trained on a different dataset config; "
                          "differing keys ['variant']")
    assert "variant: judge has 'simple', data has 'cond'" in msg and "make judge DATA=dsprites" in msg
    assert not list(in_tmp.rglob("metrics.json"))  # no evaluation written
    nothing_half_written(in_tmp)


# -- a checkpoint path that does not exist --------------------------------------------------------------
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_checkpoint_path_that_does_not_exist_is_named(in_tmp, subcommand):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        main([subcommand, *TINY, *QUICK, "--ckpt_path=runs/tiny/nope.ckpt"])
    nothing_half_written(in_tmp)


def test_a_checkpoint_path_that_does_not_exist_fails_before_a_run_directory_is_made(in_tmp):
    with pytest.raises(FileNotFoundError) as err:
        main(["fit", *TINY, *QUICK, "--ckpt_path=runs/tiny/nope.ckpt"])
    assert "expected a .ckpt file, a run directory (runs/<experiment>/<run id>) or 'last'" in str(err.value)
    assert not (in_tmp / "runs").exists()


def test_a_truncated_checkpoint_is_named_before_training_starts(in_tmp):
    ckpt = in_tmp / "cut.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 the first bytes of a checkpoint, then nothing")
    with pytest.raises(ValueError) as err:
        main(["fit", *TINY, *QUICK, f"--ckpt_path={ckpt}"])
    assert first_line(err).startswith(f"checkpoint '{ckpt}' is not readable")
    assert "expected a .ckpt file written by Lightning (truncated or corrupted?)" in first_line(err)
    nothing_half_written(in_tmp)



def test_command_line_prints_one_line_for_a_bad_value_and_a_traceback_with_sdcd_debug(in_tmp):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sdcd", "fit", "--config", "tests/configs/tiny.yaml", "--model.n_frames=0",
           "--trainer.fast_dev_run=true"]
    env = {k: v for k, v in os.environ.items() if k != "SDCD_DEBUG"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("sdcd: error:")]
    assert errors == ["sdcd: error: model.n_frames must be positive (at least 2 frames), got 0 "
                      "(SDCD_DEBUG=1 shows the traceback)"]
    assert "Traceback" not in out.stderr
    out = subprocess.run(cmd, capture_output=True, text=True, env={**env, "SDCD_DEBUG": "1"}, timeout=300)
    assert out.returncode != 0 and "Traceback" in out.stderr
