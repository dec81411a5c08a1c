"""The real entry point: every experiment YAML fits with fast_dev_run; overrides reach the model."""

import subprocess
import sys

import pytest
import yaml
from conftest import EXPERIMENTS, ROOT

from sdcd.callbacks.evaluation import EvaluationCallback
from sdcd.callbacks.reproducibility import Reproducibility
from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.cli import main

EXPERIMENT_FILES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
# Full-size configs run one CPU step at a small batch so the suite stays fast; the model is the real one.
SMALL_BATCH = ["--data.batch_size=4", "--data.eval_batch_size=4"]


def _needs_small_batch(name: str) -> bool:
    cfg = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    return cfg["data"]["init_args"].get("batch_size", 64) > 16


def _video_folder(root):
    """Four short generated videos (the video experiment needs a folder the user names)."""
    from helpers.data_files import write_video

    root.mkdir()
    for i in range(4):
        write_video(root / f"clip{i}.mp4", 24)
    return root


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_experiment_fits_with_fast_dev_run(name, in_tmp):
    args = ["fit", "--config", f"experiments/{name}.yaml", "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu"]
    if _needs_small_batch(name):
        args += SMALL_BATCH
    model_args = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"].get("init_args", {})
    if model_args.get("compile"):  # one step would spend minutes compiling; test_compile.py covers compile
        args += ["--model.compile=false"]
    if model_args.get("stage") == "disentangle":  # stage 2 needs a stage-1 checkpoint: an untrained one
        import torch

        from sdcd.model import SDCD

        keys = ("n_frames", "frame_size", "base_channels", "latent_dim")
        model_args = {"latent_dim": model_args.get("feature_dim"), **model_args}  # a baseline's name for it
        ae = SDCD(**{k: model_args[k] for k in keys if model_args.get(k) is not None}, stage="autoencoder")
        torch.save({"state_dict": ae.state_dict()}, in_tmp / "ae.ckpt")
        args += [f"--model.autoencoder_checkpoint={in_tmp / 'ae.ckpt'}"]
    if name.startswith("video"):
        args = [a for a in args if "eval_batch_size" not in a]
        args += [f"--data.root={_video_folder(in_tmp / 'videos')}", "--data.num_workers=0", "--data.val_fraction=0.25"]
    cli = main(args)
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1


@pytest.mark.parametrize("base_name, name, change", [
    ("lpc_shuffle_cpu", "lpc_swap_cpu", {  # the measured departure's four values
        "model.init_args.kl_weight": 20.0, "model.init_args.augmentation_weight": 10.0,
        "model.init_args.augmentation_loss": "swap", "model.init_args.augmentation_colours": "permute"}),
    ("lpc_swap_cpu", "lpc_swap_gamma_cpu", {  # the gamma copies and β = 80
        "model.init_args.kl_weight": 80.0, "model.init_args.augmentation_colours": "gamma",
        "model.init_args.augmentation_gamma_spread": 3.0}),
    ("lpc_autoencoder_cpu", "lpc_autoencoder_lowpass_cpu", {  # longer, lr decay, low-frequency term, 2 frames
        "trainer.max_epochs": 25, "model.init_args.lr_decay_start": 4005, "model.init_args.lr_decay_steps": 2670,
        "model.init_args.lowpass_weight": 10.0, "model.init_args.lowpass_kernel": 4,
        "model.init_args.autoencoder_frames": 2}),
    ("lpc_autoencoder_lowpass_cpu", "lpc_autoencoder_lowpass_n25_cpu", {  # less feature noise, 60 epochs
        "model.init_args.feature_noise": 0.25, "trainer.max_epochs": 60, "model.init_args.lr_decay_start": 10146,
        "model.init_args.lr_decay_steps": 5874}),
    ("lpc_swap_gamma_cpu", "lpc_swap_gamma_n25_cpu", {  # its noise, the swap weight scaled to its features, longer
        "model.init_args.feature_noise": 0.25, "model.init_args.augmentation_weight": 80.0,
        "trainer.max_steps": 7500, "model.init_args.lr_decay_start": 4500, "model.init_args.lr_decay_steps": 3000}),
])
def test_each_derived_cpu_config_is_its_base_recipe_plus_its_change_only(base_name, name, change):
    """experiments/<name>.yaml = <base_name>.yaml with the values of `change` (dotted paths) and nothing else."""
    base = yaml.safe_load((EXPERIMENTS / f"{base_name}.yaml").read_text())
    other = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())

    def at(config: dict, dotted: str) -> tuple[dict, str]:
        *parents, key = dotted.split(".")
        for part in parents:
            config = config[part]
        return config, key

    for dotted, value in change.items():
        section, key = at(other, dotted)
        assert section[key] == value, dotted
        section, key = at(base, dotted)
        section[key] = value
    assert other == base


def test_override_reaches_the_model(in_tmp):
    cli = main(["--config", "tests/configs/tiny.yaml", "--model.kl_weight=0.5", "--model.flow_weight=3",
                "--data.batch_size=8"], run=False)
    assert cli.model.hparams.kl_weight == 0.5 and cli.model.hparams.flow_weight == 3.0
    assert cli.datamodule.batch_size == 8


def test_shuffle_schedule_override(in_tmp):
    cli = main(["--config", "tests/configs/tiny.yaml", "--shuffle.every=0", "--shuffle.mode=sequence"], run=False)
    (shuffle,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "ShuffleCallback"]
    assert shuffle.every == 0 and shuffle.mode == "sequence"


def test_print_config_round_trips(in_tmp):
    def printed(*args):
        return subprocess.run([sys.executable, "-m", "sdcd", "fit", *args, "--print_config"], capture_output=True,
                              text=True, check=True, timeout=120).stdout

    first = printed("--config", "tests/configs/tiny.yaml", "--model.kl_weight=0.7", "--shuffle.every=3")
    assert "kl_weight: 0.7" in first and "every: 3" in first
    (in_tmp / "printed.yaml").write_text(first)
    assert printed("--config", "printed.yaml") == first
    cli = main(["fit", "--config", "printed.yaml", "--trainer.fast_dev_run=true"])
    assert cli.model.hparams.kl_weight == 0.7


def test_unknown_override_is_a_clear_error(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["--config", "tests/configs/tiny.yaml", "--model.not_a_parameter=1"], run=False)
    assert "not_a_parameter" in capsys.readouterr().err


def test_shape_mismatch_between_model_and_data_is_named(in_tmp):
    with pytest.raises(ValueError, match="model.n_frames=5 does not match the data"):
        main(["fit", "--config", "tests/configs/tiny.yaml", "--model.n_frames=5", "--trainer.fast_dev_run=true"])


def test_make_train_runs_and_rejects_unknown_experiments():
    env_args = ["make", "-s", "--no-print-directory", "-C", str(ROOT)]
    ok = subprocess.run(env_args + ["train", "EXP=dsprites_small", "ARGS=--trainer.fast_dev_run=true"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(env_args + ["train", "EXP=no_such_exp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "unknown experiment EXP='no_such_exp'" in bad.stderr and "dsprites_cond_shuffle" in bad.stderr


def test_make_train_lpc_shuffle_fast_dev_run_as_documented():
    """The issue's literal command, from ../shared/data/lpc-sprites, at the config's real batch size."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "train", "EXP=lpc_shuffle",
                          "ARGS=--trainer.fast_dev_run=true"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "max_steps=1" in out.stdout + out.stderr  # Lightning's fast_dev_run message: one step ran


@pytest.mark.parametrize("shuffle_name", sorted(p.stem for p in EXPERIMENTS.glob("*_shuffle*.yaml")
                                                if (EXPERIMENTS / p.name.replace("_shuffle", "_noshuffle")).exists()))
def test_each_noshuffle_config_differs_from_its_shuffle_config_only_in_shuffle_every(shuffle_name):
    shuffle = yaml.safe_load((EXPERIMENTS / f"{shuffle_name}.yaml").read_text())
    noshuffle = yaml.safe_load((EXPERIMENTS / f"{shuffle_name.replace('_shuffle', '_noshuffle')}.yaml").read_text())
    assert shuffle["shuffle"]["every"] >= 1 and noshuffle["shuffle"]["every"] == 0
    shuffle["shuffle"].pop("every"), noshuffle["shuffle"].pop("every")
    assert shuffle == noshuffle


def test_print_config_shows_every_callback_group_and_the_trainer_runs_them(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "tests/configs/tiny.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"shuffle", "evaluation", "reproducibility"} <= set(printed)
    assert printed["evaluation"]["judge_path"] is None and printed["reproducibility"]["rng_states"] is True
    cli = main(["--config", "tests/configs/tiny.yaml", "--reproducibility.rng_states=false"], run=False)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert kinds.count(Reproducibility) == kinds.count(EvaluationCallback) == kinds.count(ShuffleCallback) == 1
    (repro,) = [c for c in cli.trainer.callbacks if isinstance(c, Reproducibility)]
    assert repro.rng_states is False and repro.metadata.experiment == "tiny"


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_experiment_prints_its_config(name, in_tmp, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", f"experiments/{name}.yaml", "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and {"shuffle", "evaluation", "reproducibility"} <= set(printed)
