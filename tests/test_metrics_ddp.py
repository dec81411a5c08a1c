"""JudgeMetrics over 2 CPU processes (gloo) equals one process on the same data, even and uneven sizes.

The DistributedSampler pads an uneven split by repeating items; `distributed_valid_mask` removes them.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.ddp import free_port
from lightning import LightningModule, Trainer

from sdcd.data_modules.base import Factor, IndexedDataModule
from sdcd.judge import Judge
from sdcd.metrics import JudgeMetrics, distributed_valid_mask

FACTORS = (
    Factor("color", 3, static=True),
    Factor("size", 4, static=True, ordinal=True),
    Factor("pos", 5, static=False, ordinal=True),
)
T, S = 3, 8  # frames, frame side


def make_judge() -> Judge:
    torch.manual_seed(123)  # same weights in every process
    return Judge(FACTORS, frame_size=S, base_channels=4, embed_dim=8, hidden_size=8, head_hidden=8).eval()


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, T, 3, S, S, generator=g)  # (N, T, C, H, W)
    cols = []
    for f in FACTORS:
        per_seq = torch.randint(0, f.n_classes, (n, 1), generator=g).expand(n, T)
        cols.append(per_seq if f.static else torch.randint(0, f.n_classes, (n, T), generator=g))
    return x, torch.stack(cols, -1)  # labels (N, T, F)


def reference(n: int) -> dict[str, torch.Tensor]:
    x, labels = make_data(n)
    m = JudgeMetrics(make_judge())
    for lo in range(0, n, 4):  # another batching than the ranks use: sums must not care
        m.update(x[lo : lo + 4], labels[lo : lo + 4])
    return m.compute()


def _worker(rank: int, world: int, port: int, sizes: list[int], batch: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for n in sizes:
            x, labels = make_data(n)
            masked, unmasked = JudgeMetrics(make_judge()), JudgeMetrics(make_judge())
            sampler = torch.utils.data.DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=True, seed=7
            )
            order = torch.tensor(list(sampler))
            for i, idx in enumerate(order.split(batch)):
                valid = distributed_valid_mask(i, batch, len(idx), n, rank, world)
                masked.update(x[idx], labels[idx], valid)
                unmasked.update(x[idx], labels[idx])
            # compute() on every rank (it is a collective)
            result = {"masked": masked.compute(), "unmasked": unmasked.compute()}
            torch.save(result, os.path.join(out_dir, f"{n}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6, equal_nan=True), (key, a[key], b[key])


def test_two_gloo_processes_equal_one_process_for_even_and_uneven_sizes(tmp_path):
    sizes = [12, 11]  # even; uneven (the sampler pads one item)
    mp.spawn(_worker, args=(2, free_port(), sizes, 4, str(tmp_path)), nprocs=2, join=True)
    for n in sizes:
        ref = reference(n)
        assert ref["n/sequences"].item() == n
        for rank in range(2):
            got = torch.load(tmp_path / f"{n}-{rank}.pt")
            assert_same(got["masked"], ref)
            # without the mask the padded item is counted twice: the test would notice double counting
            assert got["unmasked"]["n/sequences"].item() == n + n % 2


# -- the same through Lightning's ddp_spawn ----------------------------------------------------------
class FakeData(IndexedDataModule):
    factors = FACTORS

    def __init__(self, n_test: int = 11, batch_size: int = 2):
        super().__init__(batch_size=batch_size, drop_last=False)
        self.n_test = n_test

    def _build(self, split: str) -> int:
        return self.n_test

    def materialize(self, split: str, index: torch.Tensor) -> dict:
        x, labels = make_data(self.n_test)
        return {"x": x[index.cpu()].to(index.device), "labels": labels[index.cpu()].to(index.device)}


class ScoreModule(LightningModule):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Linear(1, 1)
        self.scores = JudgeMetrics(make_judge(), FACTORS, prefix="test/")

    def test_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        valid = distributed_valid_mask(
            batch_idx,
            dm.eval_batch_size,
            batch["x"].shape[0],
            dm.split_size("test"),
            self.global_rank,
            self.trainer.world_size,
            self.device,
        )
        self.scores.update(batch["x"], batch["labels"], valid)

    def on_test_epoch_end(self):
        self.log_dict(self.scores.compute())
        self.scores.reset()


@pytest.mark.slow  # ~15-20 s: two fresh interpreters import torch and Lightning
def test_lightning_ddp_spawn_on_an_uneven_split_equals_one_process(tmp_path):
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    # 11 sequences on 2 ranks: Lightning's DistributedSampler pads rank 1 with a repeat
    (got,) = trainer.test(ScoreModule(), datamodule=FakeData(n_test=11, batch_size=2), verbose=False)
    ref = reference(11)
    assert got["test/n/sequences"] == 11
    for key, value in ref.items():
        assert got[f"test/{key}"] == pytest.approx(value.item(), rel=1e-5, abs=1e-6, nan_ok=True), key
