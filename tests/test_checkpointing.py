"""Resuming: an interrupted run continues exactly; checkpoints are atomic, self-describing and guarded.

Core test: a tiny-config run killed mid-epoch and resumed from its last checkpoint ends with the same
weights, optimiser state and logged metrics as an uninterrupted run of the same length, compared
*exactly* (`torch.equal`, float `==`): on CPU the computation repeats bit for bit once the data order
and the random streams are restored.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, EXPERIMENTS
from helpers.tiny_run import (
    DATA,
    MODEL,
    CrashAt,
    Interrupted,
    ResumableTinyData,
    assert_same_tensors,
    fit,
)

import sdcd.cli
from sdcd.callbacks.evaluation import EvaluationCallback, evaluation_callback
from sdcd.callbacks.reproducibility import RNG_KEY
from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.checkpointing import (
    META_KEY,
    AtomicCheckpointIO,
    check_checkpoint,
    keep_previous_metrics,
    load_checkpoint_for_check,
    newest_last,
    resolve_ckpt_path,
)
from sdcd.data_modules import base
from sdcd.data_modules.base import IndexDataset
from sdcd.data_modules.sampling import EpochRandomSampler, ResumableDataLoader
from sdcd.judge import Judge, data_signature, save_judge
from sdcd.model import SDCD
from sdcd.runs import run_dir_of


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: faster on a shared 2-core machine, and the same in every run of a test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- exact resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("crash, every, resumed_from", [(5, 2, 4), (9, 4, 8)],
                         ids=["mid-epoch", "checkpoint-on-last-batch"])
def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, crash, every,
                                                                            resumed_from):
    """Exact comparison. 20 steps = 2.5 epochs of 8. `mid-epoch`: killed at step 5, resumed from the
    step-4 checkpoint; `checkpoint-on-last-batch`: the step-8 checkpoint is written on epoch 0's last
    batch, before its validation, which the resumed run does not repeat."""
    ref, ref_trainer, ref_batches = fit(tmp_path / "ref", 20, every=every)
    with pytest.raises(Interrupted):
        fit(tmp_path / "run", 20, CrashAt(crash), every=every)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == resumed_from
    model, trainer, batches = fit(tmp_path / "run", 20, ckpt_path=tmp_path / "run" / "last.ckpt", every=every)

    assert batches.seen == ref_batches.seen[resumed_from:]  # the same batches, from where it stopped
    assert trainer.global_step == ref_trainer.global_step == 20
    assert_same_tensors(model.state_dict(), ref.state_dict(), "weights")
    assert_same_tensors(trainer.optimizers[0].state_dict(), ref_trainer.optimizers[0].state_dict(), "adam")
    got, want = trainer.callback_metrics, ref_trainer.callback_metrics
    assert {k for k in want if k.startswith("train/")} <= got.keys()
    for key in got:  # every metric the resumed run logged last equals the uninterrupted run's
        assert got[key].item() == want[key].item(), key
    shuffle = next(c for c in trainer.callbacks if isinstance(c, ShuffleCallback))
    assert (shuffle.steps, shuffle.shuffled) == (20, 7)  # steps 0, 3, ..., 18 shuffled


def test_without_saved_random_states_the_resumed_run_differs(tmp_path):
    """The comparison above is sensitive: Lightning alone does not restore the global RNG."""
    ref, _, _ = fit(tmp_path / "ref", 12)
    with pytest.raises(Interrupted):
        fit(tmp_path / "run", 12, CrashAt(5), rng=False)
    with pytest.warns(UserWarning, match="no random states"):
        model, _, batches = fit(tmp_path / "run", 12, ckpt_path=tmp_path / "run" / "last.ckpt")
    assert batches.seen[0][0] == 4  # resumed mid-epoch, data order restored
    assert not torch.equal(model.mean_net.weight, ref.mean_net.weight)


# -- the data order -------------------------------------------------------------------------------------
def test_epoch_random_sampler_is_distributed_samplers_order_for_one_process():
    data = list(range(37))
    sampler = EpochRandomSampler(data, seed=5)
    dist = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        dist.set_epoch(epoch)
        orders.append(list(sampler))
        assert orders[-1] == list(dist)
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == data


def test_resumable_loader_skips_the_served_batches_of_the_saved_epoch_only():
    loader = ResumableDataLoader(IndexDataset(20, "train"), batch_size=4, shuffle=True, drop_last=True,
                                 collate_fn=base._identity, seed=3)
    loader.sampler.set_epoch(2)
    full = [b["index"].tolist() for b in loader]
    it = iter(loader)
    served = [next(it)["index"].tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "served": 2} and served == full[:2]

    fresh = ResumableDataLoader(IndexDataset(20, "train"), batch_size=4, shuffle=True, drop_last=True,
                                collate_fn=base._identity, seed=3)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)
    assert [b["index"].tolist() for b in fresh] == full[2:]  # the rest of epoch 2
    assert [b["index"].tolist() for b in fresh] == full  # the skip applies once
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(3)  # the saved epoch is over: a new epoch is not cut short
    assert len(list(fresh)) == 5


def test_a_loader_pass_draws_nothing_from_the_global_rng():
    """A DataLoader iterator draws its worker base seed from the global RNG; ours from its own."""
    loader = ResumableDataLoader(IndexDataset(8, "train"), batch_size=4, shuffle=True,
                                 collate_fn=base._identity)
    torch.manual_seed(0)
    list(loader)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)


# -- atomic checkpoints ---------------------------------------------------------------------------------
def half_written_then_crash(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half of a checkpoint")
    raise OSError("No space left on device")


def test_a_crash_while_saving_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(3.0)}, path)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # the usual mode, not mkstemp's
    monkeypatch.setattr(torch, "save", half_written_then_crash)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = io.load_checkpoint(path)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(3.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_temp_file_left_by_a_killed_save_is_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_run_that_crashes_while_checkpointing_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def fail_on_the_fourth(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # steps 2 and 4 each write epoch=…-step=….ckpt and last.ckpt
            return half_written_then_crash(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_on_the_fourth)
    with pytest.raises(OSError, match="No space left"):
        fit(tmp_path, 6)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*"))
    assert load_checkpoint_for_check(tmp_path / "last.ckpt")["global_step"] == 2
    _, trainer, batches = fit(tmp_path, 6, ckpt_path=tmp_path / "last.ckpt")
    assert batches.seen[0][0] == 2 and trainer.global_step == 6


# -- what a checkpoint carries --------------------------------------------------------------------------
def tiny_judge(path, data) -> str:
    """An untrained judge file for the data (enough to be loaded and referenced)."""
    torch.manual_seed(0)
    judge = Judge(data.factors, frame_size=data.frame_size, base_channels=4, embed_dim=8, hidden_size=8,
                  head_hidden=8)
    save_judge(judge, path, data_signature(data))
    return str(path)


def test_checkpoint_carries_data_config_and_judge_reference_but_no_judge_weights(tmp_path):
    from sdcd.io import file_sha256

    judge = tiny_judge(tmp_path / "judge.pt", ResumableTinyData(**DATA))
    evaluation = EvaluationCallback(judge_path=judge, every_n_epochs=1, val_sequences=8)
    model, _, _ = fit(tmp_path, 2, evaluation)
    assert evaluation.judge is not None  # the judge was loaded and used during fit
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain types only
    meta = ckpt[META_KEY]
    assert meta["experiment"] == "tiny" and meta["model_class"] == "sdcd.model.SDCD"
    assert meta["data_class"] == "helpers.tiny_run.ResumableTinyData"
    assert meta["data_signature"] == data_signature(ResumableTinyData(**DATA))
    assert meta["judge"] == {"path": judge, "sha256": file_sha256(judge)}
    assert not [k for k in ckpt["state_dict"] if "judge" in k]
    assert len(ckpt[RNG_KEY]) == 1 and meta["world_size"] == 1


# -- refusing checkpoints that do not belong ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    root, threads = tmp_path_factory.mktemp("ckpt"), torch.get_num_threads()
    torch.set_num_threads(1)
    fit(root, 2)
    torch.set_num_threads(threads)
    return load_checkpoint_for_check(root / "last.ckpt")


def test_a_checkpoint_of_another_experiment_is_refused(tiny_ckpt):
    with pytest.raises(ValueError) as err:
        check_checkpoint(tiny_ckpt, SDCD(**MODEL), experiment="dsprites_cond_shuffle", path="x/last.ckpt")
    msg = str(err.value)
    assert "'x/last.ckpt' belongs to experiment 'tiny'" in msg and "'dsprites_cond_shuffle'" in msg
    assert "--experiment_name=tiny" in msg
    check_checkpoint(tiny_ckpt, SDCD(**MODEL), experiment="tiny")  # its own experiment: accepted


def test_an_incompatible_model_config_is_refused_naming_the_settings(tiny_ckpt):
    with pytest.raises(ValueError) as err:
        check_checkpoint(tiny_ckpt, SDCD(**{**MODEL, "latent_dim": 32, "flow_layers": 3}), experiment="tiny")
    msg = str(err.value)
    assert "does not fit this model config" in msg
    assert "latent_dim: checkpoint 16 vs config 32" in msg and "flow_layers: checkpoint 2 vs config 3" in msg
    assert "Weights that differ: " in msg and "checkpoint (16,), model (32,)" in msg


def test_another_data_class_is_refused_and_other_data_settings_warn_on_resume(tiny_ckpt):
    from sdcd.data_modules.sprites import SpritesDataModule

    with pytest.raises(ValueError, match="data class helpers.tiny_run.ResumableTinyData.*SpritesDataModule"):
        check_checkpoint(tiny_ckpt, SDCD(**MODEL), SpritesDataModule(), stage="test")
    changed = "other data settings .*split_sizes: checkpoint .*.train.: 64.* vs config .*.train.: 128"
    with pytest.warns(UserWarning, match=changed):
        check_checkpoint(tiny_ckpt, SDCD(**MODEL), ResumableTinyData(**{**DATA, "n_train": 128}), stage="fit")
    with pytest.warns(UserWarning, match="other model settings: kl_weight: checkpoint 0.2 vs config 0.5"):
        check_checkpoint(tiny_ckpt, SDCD(**{**MODEL, "kl_weight": 0.5}), stage="fit")


def test_a_plain_lightning_checkpoint_still_gets_the_shape_check(tiny_ckpt):
    plain = {k: v for k, v in tiny_ckpt.items() if k not in (META_KEY, RNG_KEY)}
    check_checkpoint(plain, SDCD(**MODEL), ResumableTinyData(**DATA), experiment="other")
    with pytest.raises(ValueError, match="base_channels: checkpoint 8 vs config 16"):
        check_checkpoint(plain, SDCD(**{**MODEL, "base_channels": 16}))


def test_an_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(ValueError, match=r"checkpoint '.*cut.ckpt' is not readable .*truncated or corrupted"):
        load_checkpoint_for_check(tmp_path / "cut.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"'.*other.pt' is not a Lightning checkpoint"):
        load_checkpoint_for_check(tmp_path / "other.pt")


# -- what --ckpt_path means -----------------------------------------------------------------------------
def make_run(root, experiment: str, run_id: str, mtime: float) -> str:
    ckpt = root / experiment / run_id / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (mtime, mtime))
    return str(ckpt)


def test_resolve_ckpt_path(tmp_path):
    older = make_run(tmp_path, "tiny", "20240101-000000-aaaa", 1_000)
    newer = make_run(tmp_path, "tiny", "20230101-000000-bbbb", 2_000)  # older name, written later
    make_run(tmp_path, "other", "20250101-000000-cccc", 3_000)
    assert resolve_ckpt_path("last", "tiny", tmp_path) == newer
    # a run directory fixed in advance (SDCD_RUN_DIR: a SLURM/torchrun job): "last" means its own
    fixed = tmp_path / "tiny" / "20240101-000000-aaaa"
    assert resolve_ckpt_path("last", "tiny", tmp_path, run_dir=fixed) == older
    assert resolve_ckpt_path("last", "tiny", tmp_path, run_dir=tmp_path / "tiny" / "slurm-123") is None
    with pytest.raises(FileNotFoundError, match="no run .*slurm-123 has a checkpoints/last.ckpt"):
        resolve_ckpt_path("last", "tiny", tmp_path, stage="test", run_dir=tmp_path / "tiny" / "slurm-123")
    assert resolve_ckpt_path(str(tmp_path / "tiny" / "20240101-000000-aaaa"), "tiny", tmp_path) == older
    assert resolve_ckpt_path(str(tmp_path / "tiny" / "20240101-000000-aaaa" / "checkpoints"), "tiny") == older
    assert resolve_ckpt_path(older, "tiny") == older
    assert run_dir_of(older) == (tmp_path / "tiny" / "20240101-000000-aaaa").resolve()
    assert run_dir_of(tmp_path / "loose.ckpt") is None
    assert resolve_ckpt_path(None, "tiny") is None and resolve_ckpt_path("best", "tiny") == "best"
    assert resolve_ckpt_path("last", "never_ran", tmp_path, stage="fit") is None  # fit: a fresh start
    with pytest.raises(FileNotFoundError, match="no run of experiment 'never_ran' has a checkpoints/last"):
        resolve_ckpt_path("last", "never_ran", tmp_path, stage="test")
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path=.*nope.ckpt: no such file or folder; "
                                                r"expected a \.ckpt file, a run directory"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), "tiny")
    with pytest.raises(FileNotFoundError, match="has no checkpoints/last.ckpt"):
        resolve_ckpt_path(str(tmp_path / "other"), "tiny")


def test_last_means_the_newer_of_the_epoch_end_and_the_mid_epoch_last_checkpoint(tmp_path):
    """Two ModelCheckpoints with save_last write last.ckpt and last-v1.ckpt; an interrupted run stopped at
    the newer one, whichever it is."""
    run = tmp_path / "tiny" / "20240101-000000-aaaa"
    epoch_end = Path(make_run(tmp_path, "tiny", run.name, 1_000))
    mid_epoch = epoch_end.with_name("last-v1.ckpt")
    mid_epoch.write_bytes(b"x")
    os.utime(mid_epoch, (2_000, 2_000))
    (epoch_end.parent / "last-ish.ckpt").write_bytes(b"x")  # not one of Lightning's names: ignored
    for value in ("last", str(run), str(run / "checkpoints")):
        assert resolve_ckpt_path(value, "tiny", tmp_path) == str(mid_epoch), value
    assert resolve_ckpt_path("last", "tiny", tmp_path, run_dir=run) == str(mid_epoch)
    os.utime(epoch_end, (3_000, 3_000))  # an epoch ended after the last mid-epoch save
    assert resolve_ckpt_path("last", "tiny", tmp_path) == str(epoch_end)
    assert newest_last(run / "checkpoints") == epoch_end and newest_last(tmp_path) is None


def test_keep_previous_metrics_renames_instead_of_letting_the_logger_delete(tmp_path):
    assert keep_previous_metrics(tmp_path) is None
    (tmp_path / "metrics.csv").write_text("step\n1\n")
    assert keep_previous_metrics(tmp_path) == tmp_path / "metrics.1.csv"
    (tmp_path / "metrics.csv").write_text("step\n2\n")
    assert keep_previous_metrics(tmp_path) == tmp_path / "metrics.2.csv"
    assert (tmp_path / "metrics.1.csv").read_text() == "step\n1\n" and not (tmp_path / "metrics.csv").exists()


# -- through the CLI (`make train EXP=… ARGS="--ckpt_path=last"`) ---------------------------------------
def _pending() -> list[str]:
    """The integration steps (cli.py, base.py) that the CLI tests below wait for."""
    cli_source = inspect.getsource(sdcd.cli)
    names = ("check_checkpoint", "Reproducibility", "AtomicCheckpointIO")
    pending = [name for name in names if name not in cli_source]
    if "resolve_ckpt_path" not in inspect.getsource(sdcd.cli.SDCDCLI._parse_ckpt_path):
        pending.append("resolve_ckpt_path in SDCDCLI._parse_ckpt_path")
    if "ResumableDataLoader" not in inspect.getsource(base):
        pending.append("base.py ResumableDataLoader")
    return pending


def needs_cli_integration(fn):  # the integration is in place (test_integration_is_in_place checks it)
    return fn
CLI_STEPS = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1",
             "--trainer.max_epochs=-1", *(f"--data.{k}={v}" for k, v in DATA.items() if k != "variant")]


def cli_fit(*args: str, crash: int | None = None):
    if crash is None:
        return sdcd.cli.main(["fit", "--config", "tests/configs/tiny.yaml", *CLI_STEPS, *args])
    cli = sdcd.cli.main(["--config", "tests/configs/tiny.yaml", *CLI_STEPS, *args], run=False)
    cli.trainer.callbacks.insert(0, CrashAt(crash))
    with pytest.raises(Interrupted):
        cli.trainer.fit(cli.model, cli.datamodule)
    return cli


@needs_cli_integration
def test_cli_resumes_with_ckpt_path_last_in_the_same_run_directory(in_tmp):
    ref = cli_fit("--trainer.max_steps=12")
    crashed = cli_fit("--trainer.max_steps=12", crash=5)  # tiny.yaml checkpoints every 2 steps
    (crashed.run_dir / "metrics.csv").write_text("step\n0\n")  # what the CSV logger had written
    resumed = cli_fit("--trainer.max_steps=12", "--ckpt_path=last")
    assert resumed.run_dir.resolve() == crashed.run_dir.resolve()
    assert (resumed.run_dir / "metrics.1.csv").read_text() == "step\n0\n"  # kept, not deleted
    assert_same_tensors(resumed.model.state_dict(), ref.model.state_dict(), "weights")
    again = cli_fit("--trainer.max_steps=14", f"--ckpt_path={crashed.run_dir}")  # a run directory works too
    assert again.run_dir.resolve() == crashed.run_dir.resolve() and again.trainer.global_step == 14


@needs_cli_integration
@pytest.mark.parametrize("given", ["run directory", "file"])
def test_cli_refuses_an_incompatible_checkpoint_before_writing_anything(in_tmp, given):
    first = cli_fit("--trainer.max_steps=2")
    config = (first.run_dir / "config.yaml").read_text()
    ckpt = first.run_dir if given == "run directory" else first.run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="latent_dim: checkpoint 16 vs config 32"):
        cli_fit("--trainer.max_steps=4", "--model.latent_dim=32", f"--ckpt_path={ckpt}")
    assert (first.run_dir / "config.yaml").read_text() == config  # the run's config is untouched
    assert not list(in_tmp.rglob(".*.tmp"))


def test_evaluation_settings_come_from_the_command_line_not_the_checkpoint(in_tmp):
    """LightningCLI replaces the config's model settings by the checkpoint's hyperparameters; the
    evaluation: group is not part of them."""
    first = cli_fit("--trainer.max_steps=2")
    ckpt = first.run_dir / "checkpoints" / "last.ckpt"
    cli = sdcd.cli.main(["validate", "--config", "tests/configs/tiny.yaml", *CLI_STEPS, f"--ckpt_path={ckpt}",
                         "--evaluation.repeats=2"])
    assert evaluation_callback(cli.trainer).repeats == 2


def test_a_checkpoint_with_the_old_evaluation_model_settings_still_loads(in_tmp, capsys):
    """Checkpoints written before the evaluation: group carry judge_path, eval_repeats, ... as SDCD
    hyperparameters: they are accepted, ignored, and named in a one-line note."""
    first = cli_fit("--trainer.max_steps=2")
    ckpt = first.run_dir / "checkpoints" / "last.ckpt"
    old = torch.load(ckpt, weights_only=False)
    old["hyper_parameters"].update(judge_path=None, eval_repeats=5, eval_every_n_epochs=0, eval_val_sequences=1024,
                                   peers_protocol=None, eval_probes=True)
    torch.save(old, in_tmp / "old.ckpt")
    cli = sdcd.cli.main(["validate", "--config", "tests/configs/tiny.yaml", *CLI_STEPS,
                         f"--ckpt_path={in_tmp / 'old.ckpt'}"])
    assert cli.trainer.state.finished and "eval_repeats" not in cli.model.hparams
    printed = capsys.readouterr()
    assert "eval_repeats, eval_every_n_epochs, eval_val_sequences" in printed.out + printed.err
    reloaded = SDCD.load_from_checkpoint(in_tmp / "old.ckpt")  # the Python API ignores them as well
    assert reloaded.hparams.latent_dim == cli.model.hparams.latent_dim


def test_integration_is_in_place():
    assert _pending() == []


def test_an_old_config_with_evaluation_model_settings_is_read_as_the_evaluation_group(in_tmp, capsys):
    """A run's config.yaml saved by an older sdcd (what `make eval CKPT=…` reads) still parses: its
    evaluation model settings become the evaluation: group, with a one-line note."""
    old = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    old["model"]["init_args"].update(judge_path="judges/x.pt", eval_repeats=3, eval_every_n_epochs=0,
                                     eval_val_sequences=64, peers_protocol=None, eval_probes=False)
    (in_tmp / "config.yaml").write_text(yaml.safe_dump(old))
    cli = sdcd.cli.main(["--config", str(in_tmp / "config.yaml")], run=False)
    evaluation = evaluation_callback(cli.trainer)
    assert (evaluation.judge_path, evaluation.repeats, evaluation.val_sequences, evaluation.probes) == (
        "judges/x.pt", 3, 64, False)
    assert "judge_path" not in cli.model.hparams
    assert "are from an older sdcd; read as the evaluation: group" in capsys.readouterr().out


def test_the_judge_configs_own_judge_path_is_never_taken_for_an_old_evaluation_setting():
    """JudgeModule's judge_path says where to write the judge: only SDCD's old arguments move."""
    path = str(EXPERIMENTS / "judge_sprites_cpu.yaml")
    assert sdcd.cli.upgrade_config(path) == path
