"""Multi-process correctness on CPU with gloo: disjoint data, one shuffle schedule, per-rank random
streams seeded from (seed, rank), exact resume, and evaluation equal to one process.

Lightning's `ddp_spawn` is used under pytest (`ddp` would re-run the whole pytest command in its
children). Spawned processes share no memory, so each rank writes what it saw to a JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.ddp import free_port
from helpers.oracle import Coded, OracleJudge, OracleModel
from helpers.tiny_run import DATA, MODEL, SEED, CrashAt, ResumableTinyData, assert_same_tensors
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from sdcd.callbacks.reproducibility import RNG_KEY, CheckpointMetadata, RNGStateCallback
from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.checkpointing import AtomicCheckpointIO
from sdcd.data_modules.sampling import rank_seed
from sdcd.evaluation import evaluate
from sdcd.model import SDCD

SHUFFLE_EVERY = 2
STEPS_PER_EPOCH = DATA["n_train"] // DATA["batch_size"] // 2  # per rank, with 2 ranks


def digest(state: torch.Tensor) -> str:
    return hashlib.sha1(state.numpy().tobytes()).hexdigest()


class Record(Callback):
    """Per rank: every batch's (global step, indices, shuffle decision) and the random states at the
    first batch, written to `<out>/<tag>-rank<r>.json` at the first batch and when training ends."""

    def __init__(self, out: str, tag: str):
        self.out, self.tag = out, tag
        self.steps: list[dict] = []
        self.first: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.first:
            generator = pl_module.shuffle_generator
            self.first = {"torch": digest(torch.get_rng_state()),
                          "shuffle_generator": None if generator is None else digest(generator.get_state())}
            self.on_train_end(trainer, pl_module)  # written now too: a killed run never reaches the end
        self.steps.append({"step": trainer.global_step, "index": batch["index"].tolist(),
                           "shuffle": pl_module.shuffle})

    def on_train_end(self, trainer, pl_module):
        path = Path(self.out) / f"{self.tag}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"steps": self.steps, "first": self.first, "world": trainer.world_size}))


def ddp_fit(root: Path, tag: str, max_steps: int, *extra: Callback, ckpt_path=None) -> SDCD:
    """The tiny model on 2 CPU processes (gloo), shuffle mode "sequence", a checkpoint every 2 steps."""
    seed_everything(SEED)
    root.mkdir(parents=True, exist_ok=True)
    model = SDCD(**MODEL)
    callbacks = [RNGStateCallback(), ShuffleCallback(every=SHUFFLE_EVERY, mode="sequence"),
                 CheckpointMetadata("tiny"), Record(str(root), tag), *extra,
                 ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, save_last=True)]
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=max_steps,
                      callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, plugins=[AtomicCheckpointIO()],
                      limit_val_batches=1, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(exists and is not empty|does not have many workers).*")
        trainer.fit(model, ResumableTinyData(**DATA), ckpt_path=ckpt_path)
    return model


def records(root: Path, tag: str) -> list[dict]:
    return [json.loads((root / f"{tag}-rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One uninterrupted 2-process run of 10 steps (2.5 epochs of 4), and the same run killed at step 7
    and resumed from its step-6 checkpoint, in the middle of epoch 1."""
    root = tmp_path_factory.mktemp("ddp")
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the children: one thread each on a small machine
    try:
        full = ddp_fit(root / "full", "full", 10)
        with pytest.raises(Exception, match="killed at step 7"):
            ddp_fit(root / "run", "crashed", 10, CrashAt(7))
        resumed = ddp_fit(root / "run", "resumed", 10, ckpt_path=root / "run" / "ckpt" / "last.ckpt")
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    return {"root": root, "full": full, "resumed": resumed}


@pytest.mark.slow  # three ddp_spawn runs: ~1 min on 2 cores
def test_ranks_see_disjoint_data_covering_each_epoch(ddp_runs):
    ranks = records(ddp_runs["root"] / "full", "full")
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in range(2):  # the two complete epochs
        steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        seen = [[i for s in r["steps"] if s["step"] in steps for i in s["index"]] for r in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(DATA["n_train"]))
    order = [[s["index"] for s in r["steps"]] for r in ranks]
    assert order[0][:STEPS_PER_EPOCH] != order[0][STEPS_PER_EPOCH : 2 * STEPS_PER_EPOCH]  # reshuffled


@pytest.mark.slow
def test_the_shuffle_schedule_agrees_across_ranks(ddp_runs):
    ranks = records(ddp_runs["root"] / "full", "full")
    decisions = [[(s["step"], s["shuffle"]) for s in r["steps"]] for r in ranks]
    assert decisions[0] == decisions[1] == [(k, k % SHUFFLE_EVERY == 0) for k in range(10)]


@pytest.mark.slow
def test_each_rank_draws_its_own_noise_seeded_from_seed_and_rank(ddp_runs):
    ranks = records(ddp_runs["root"] / "full", "full")
    expected = []
    for rank in range(2):
        torch.manual_seed(rank_seed(SEED, rank))
        expected.append(digest(torch.get_rng_state()))
    assert [r["first"]["torch"] for r in ranks] == expected and expected[0] != expected[1]


@pytest.mark.slow
def test_per_sequence_shuffle_generator_differs_per_rank_and_repeats_run_to_run(ddp_runs):
    """SDCD.on_fit_start seeds `shuffle_generator` from (seed, rank): the killed run, started with the same
    seed, began with the very same per-rank states."""
    first = [r["first"]["shuffle_generator"] for r in records(ddp_runs["root"] / "full", "full")]
    again = [r["first"]["shuffle_generator"] for r in records(ddp_runs["root"] / "run", "crashed")]
    assert None not in first and first[0] != first[1] and again == first


@pytest.mark.slow
def test_a_two_process_run_resumes_exactly(ddp_runs):
    """Exact comparison of the final weights (gloo sums two gradients: a + b == b + a in floats)."""
    root = ddp_runs["root"] / "run"
    ckpt = torch.load(root / "ckpt" / "last.ckpt", weights_only=True)
    assert len(ckpt[RNG_KEY]) == 2  # every rank's random states
    full, resumed = records(ddp_runs["root"] / "full", "full"), records(root, "resumed")
    for rank in range(2):
        assert resumed[rank]["steps"] == full[rank]["steps"][6:]  # the same batches from step 6 on
    assert_same_tensors(ddp_runs["resumed"].state_dict(), ddp_runs["full"].state_dict(), "weights")


# -- evaluation: 2 ranks = 1 process --------------------------------------------------------------------
DETERMINISTIC_TESTS = ("swap", "paired")  # the oracle's resampling tests draw per-rank noise by design


def _evaluate_worker(rank: int, world: int, port: int, n: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = evaluate(OracleModel(), Coded(n=n, batch_size=4), OracleJudge(), split="test", repeats=2,
                           tests=DETERMINISTIC_TESTS, seed=3, rank=rank, world_size=world)
        Path(out_dir, f"eval-{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_evaluation_on_two_gloo_ranks_equals_one_process(tmp_path):
    """37 sequences (uneven over 2 ranks): strided shards without padding count each one once."""
    n = 37
    single = evaluate(OracleModel(), Coded(n=n, batch_size=4), OracleJudge(), split="test", repeats=2,
                      tests=DETERMINISTIC_TESTS, seed=3)
    assert single["swap/n/sequences"]["mean"] == n
    mp.spawn(_evaluate_worker, args=(2, free_port(), n, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"eval-{rank}.json").read_text())
        assert got.keys() == single.keys()
        for key, value in single.items():
            test, metric = key.split("/", 1)
            if metric.startswith(("acc", "n/")):  # sums of 0/1 counts: exact
                assert got[key] == value, key
            else:  # sums of probabilities, added in another order: to float64 rounding
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
