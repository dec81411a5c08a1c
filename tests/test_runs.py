"""Run directories and loggers: W&B by default (offline without credentials) + CSV, one dir per run."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from sdcd import runs
from sdcd.cli import RunWandbLogger, main
from sdcd.io import atomic_write_text

# Two optimisation steps, each logged: enough for metrics.csv and a checkpoint, and fast.
TINY_FIT = [
    "fit",
    "--config",
    "tests/configs/tiny.yaml",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No API key, an empty HOME/.netrc, WANDB_MODE unset, and a W&B host that nothing listens on."""
    home = tmp_path / "home"
    home.mkdir()
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "LOGGER", runs.RUN_DIR_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(home / key.lower()))
    return home


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


# ---------------------------------------------------------------------------------------------- end to end


def test_offline_fallback_without_credentials(in_tmp, no_credentials, capsys):
    cli = main(TINY_FIT)
    out = capsys.readouterr().out
    run_dir = only_run_dir(in_tmp / "runs" / "tiny")
    assert cli.run_dir.resolve() == run_dir.resolve()
    assert out.count("sdcd: run directory runs/tiny/") == 1
    assert out.count("wandb sync") == 1 and "no W&B credentials" in out
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run in the run dir"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(cli.trainer.log_dir).resolve() == run_dir.resolve()
    import wandb

    assert wandb.run is None, "main() must close the W&B run it started"


@pytest.mark.slow
def test_offline_fallback_in_a_fresh_process_finishes_in_bounded_time(in_tmp, no_credentials):
    proc = subprocess.run(
        [sys.executable, "-m", "sdcd", *TINY_FIT],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(in_tmp / "runs" / "tiny")
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert proc.stdout.count("sdcd: run directory") == 1 and "wandb sync" in proc.stdout


def test_two_runs_in_a_row_keep_their_own_config(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    first = main([*TINY_FIT, "--model.kl_weight=0.3", "--trainer.max_steps=1"])
    second = main([*TINY_FIT, "--model.kl_weight=0.6", "--trainer.max_steps=1"])
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent
    for cli, kl in ((first, 0.3), (second, 0.6)):
        saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
        assert saved["model"]["init_args"]["kl_weight"] == kl
        assert saved["experiment_name"] == "tiny" and saved["trainer"]["default_root_dir"] is None
        assert (cli.run_dir / "checkpoints" / "last.ckpt").is_file()


def test_saved_config_runs_again_into_a_new_dir_of_the_same_experiment(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    first = main([*TINY_FIT, "--trainer.max_steps=1", "--shuffle.every=3"])
    again = main(["fit", "--config", str(first.run_dir / "config.yaml"), "--trainer.fast_dev_run=true"])
    assert again.run_dir.parent == first.run_dir.parent and again.run_dir != first.run_dir
    (shuffle,) = [c for c in again.trainer.callbacks if type(c).__name__ == "ShuffleCallback"]
    assert shuffle.every == 3


def test_logger_csv_env(in_tmp, monkeypatch):
    monkeypatch.setenv("LOGGER", "csv")
    cli = main([*TINY_FIT, "--trainer.max_steps=1"])
    assert [type(lg) for lg in cli.trainer.loggers] == [CSVLogger]
    assert (cli.run_dir / "metrics.csv").is_file() and not (cli.run_dir / "wandb").exists()
    assert Path(cli.trainer.log_dir).resolve() == cli.run_dir.resolve()


def test_wandb_mode_disabled(in_tmp, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = main([*TINY_FIT, "--trainer.max_steps=1"])
    assert [type(lg) for lg in cli.trainer.loggers] == [RunWandbLogger, CSVLogger]
    assert cli.trainer.state.finished and (cli.run_dir / "config.yaml").is_file()
    assert not list(cli.run_dir.glob("wandb/offline-run-*"))
    assert "W&B logs disabled (WANDB_MODE=disabled)" in capsys.readouterr().out


def test_tensorboard_env(in_tmp, monkeypatch):
    monkeypatch.setenv("LOGGER", "tensorboard")
    cli = main(TINY_FIT[1:], run=False)
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["TensorBoardLogger", "CSVLogger"]
    assert Path(cli.trainer.log_dir).resolve() == cli.run_dir.resolve()


def test_unknown_logger_env_is_a_clear_error(in_tmp, monkeypatch):
    monkeypatch.setenv("LOGGER", "comet")
    with pytest.raises(ValueError, match=r"LOGGER='comet' is not a known logger; expected one of .*wandb"):
        main(TINY_FIT[1:], run=False)


def test_explicit_logger_override_is_kept(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = main([*TINY_FIT[1:], "--trainer.logger=false"], run=False)
    assert cli.trainer.loggers == []
    assert Path(cli.trainer.default_root_dir) == cli.run_dir and cli.run_dir.parent == Path("runs/tiny")
    assert cli.trainer.checkpoint_callback.dirpath == os.path.realpath(cli.run_dir / "checkpoints")


def test_fast_dev_run_sets_up_no_wandb_run(in_tmp, no_credentials, capsys):
    cli = main(["fit", "--config", "tests/configs/tiny.yaml", "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    out = capsys.readouterr().out
    assert "fast_dev_run: no loggers, no config.yaml" in out and "wandb sync" not in out
    assert not (cli.run_dir / "wandb").exists() and not (cli.run_dir / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------- run dirs


def test_run_dir_naming(in_tmp, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["--config", "tests/configs/tiny.yaml", "--trainer.max_steps=1"]
    assert main(args, run=False).run_dir.parent == Path("runs/tiny")  # stem of the (last) --config
    assert main([*args, "--experiment_name=ablation"], run=False).run_dir.parent == Path("runs/ablation")
    assert (
        main([*args, f"--trainer.default_root_dir={tmp_path}/elsewhere"], run=False).run_dir.parent
        == tmp_path / "elsewhere" / "tiny"
    )
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(tmp_path / "exact"))
    cli = main(args, run=False)
    assert cli.run_dir == tmp_path / "exact" and Path(cli.trainer.default_root_dir) == tmp_path / "exact"
    assert os.environ[runs.RUN_DIR_ENV] == str(tmp_path / "exact")


def test_main_restores_the_run_dir_env(in_tmp, monkeypatch):
    """main() exports SDCD_RUN_DIR (so DDP children reuse rank 0's dir) only while it runs."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    first = main(["--config", "tests/configs/tiny.yaml"], run=False)
    assert runs.RUN_DIR_ENV not in os.environ
    second = main(["--config", "tests/configs/tiny.yaml"], run=False)
    assert first.run_dir != second.run_dir


def test_run_ids_sort_by_start_time():
    same_second = {runs.new_run_id(now=1_700_000_000) for _ in range(20)}
    assert len({i[:15] for i in same_second}) == 1 and len(same_second) > 1  # the suffix tells them apart
    assert runs.new_run_id(now=1_700_000_001) > max(same_second)


def test_messages_come_from_rank_zero_only(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    runs.say("hidden")
    monkeypatch.setenv("LOCAL_RANK", "0")
    runs.say("shown")
    assert capsys.readouterr().out == "sdcd: shown\n"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "config.yaml", "x: 1\n")
    atomic_write_text(tmp_path / "a" / "config.yaml", "x: 2\n")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["config.yaml"]
    assert (tmp_path / "a" / "config.yaml").read_text() == "x: 2\n"


# ---------------------------------------------------------------------------------------------- W&B mode


def test_credentials_from_env_or_netrc(tmp_path):
    base = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    assert not runs.has_wandb_credentials(base)
    assert runs.has_wandb_credentials({**base, "WANDB_API_KEY": "k" * 40})
    (tmp_path / "netrc").write_text("machine example.org login user password pw\n")
    assert not runs.has_wandb_credentials(base)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert runs.has_wandb_credentials(base)
    assert not runs.has_wandb_credentials({**base, "WANDB_BASE_URL": "https://wandb.example.org"})


def test_wandb_mode_choice(tmp_path):
    base = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    assert runs.choose_wandb_mode({**base, "WANDB_MODE": "disabled"}) == ("disabled", "WANDB_MODE=disabled")
    mode, why = runs.choose_wandb_mode(base)
    assert mode == "offline" and "no W&B credentials" in why
    with_key = {**base, "WANDB_API_KEY": "k" * 40}
    mode, why = runs.choose_wandb_mode({**with_key, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}"})
    assert mode == "offline" and "unreachable" in why
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert runs.choose_wandb_mode({**with_key, "WANDB_BASE_URL": url})[0] == "online"


def test_probe_gives_up_within_its_timeout(monkeypatch):
    """A connect that hangs (DNS or a dropped SYN) must not hold the run up longer than the probe timeout."""
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(5))
    start = time.monotonic()
    assert not runs.host_reachable("https://api.wandb.ai", timeout=0.3)
    assert time.monotonic() - start < 2


@pytest.mark.slow
def test_online_start_that_hangs_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    """A key, and a W&B host that accepts connections but never answers: offline after the init timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(50)), daemon=True).start()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    import wandb

    logger = RunWandbLogger(
        save_dir=tmp_path,
        project="sdcd",
        mode="online",
        fallback_offline=True,
        settings=wandb.Settings(init_timeout=3),
    )
    try:
        assert logger.experiment.settings.mode == "offline"
        assert "logging offline instead" in capsys.readouterr().out
    finally:
        runs.finish_wandb()
        server.close()
    assert isinstance(logger, WandbLogger)


@pytest.mark.slow
def test_ddp_ranks_share_one_run_dir(in_tmp, no_credentials):
    """Two CPU ranks (strategy=ddp relaunches the command): one run dir, one W&B run, one announcement."""
    argv = [sys.executable, "-m", "sdcd", *TINY_FIT, "--trainer.strategy=ddp", "--trainer.devices=2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(in_tmp / "runs" / "tiny")
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert proc.stdout.count("sdcd: run directory") == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
