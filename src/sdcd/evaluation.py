"""The evaluation protocol: generate sequences by swapping or resampling one code, score them with a judge.

Tests (each over a whole split, repeated R times with fresh random draws; mean ± std over repeats):

    reconstruction   A's own static code and dynamics, decoded: every factor judged against A. The
                     ceiling of the swap test for this model (the same codes, the same sampling noise).
    reconstruction_mean  the same from A's noise-free features and mean static code: the ceiling of
                     swap_mean.
    swap             static code of sequence A, dynamics of a random partner B ≠ A. Static factors are
                     judged against A, dynamic factors against B. As in the official code, f is a
                     sample of q(f | x) and the features carry their unit noise.
    swap_mean        the same with posterior means: A's mean static code, B's dynamics from its
                     noise-free features and mean static code (the peers' convention). Against swap, it
                     tells how much of the swap error is the sampling noise of f.
    sample_dynamics  A's static code, dynamics drawn from the LSTM prior. Static factors judged against
                     A; IS / H on the dynamic heads measure the diversity of the sampled dynamics.
    sample_dynamics_mean  A's posterior-mean static code, the prior's per-step *means* as dynamics (the
                     peers' static test).
    sample_static    A's posterior-mean dynamics (no feature noise, mean static code), static code drawn
                     from the RealNVP prior (the peers' main "action" test). Dynamic factors judged
                     against A; IS / H on the static heads.
    paired           (Moving dSprites) static code from A's *same statics* twin, dynamics from its
                     *same dynamics* twin; every factor judged against A (the official paired test).

`peers_protocol` adds the C-DSVAE/SPYL/DBSE variant on Sprites: the sample_static test on a
class-balanced subset of the action classes, batches of 128 with drop_last, accuracy / IS / H(y|x) /
H(y) of the action head, so numbers line up with published rows.

Every rank scores a disjoint strided shard of the split (no sampler padding, so nothing is counted
twice) and the sum-reduced metric states are synced in `compute()`, which every rank calls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sdcd.metrics import JudgeMetrics
from sdcd.results import TESTS

SWAP_TESTS = {"swap", "swap_mean"}  # tests that decode A's static code with a partner's dynamics


def derangement(n: int, device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of range(n) with no fixed point (n ≥ 2): partner[i] ≠ i."""
    if n < 2:
        raise ValueError(f"a swap partner needs at least 2 sequences, the split has {n}")
    perm = torch.randperm(n, device=device, generator=generator)
    shift = int(torch.randint(1, n, (), generator=generator)) if n > 1 else 0
    partner = torch.empty_like(perm)
    partner[perm] = perm.roll(-shift)
    return partner


def _mix_labels(static_src: Tensor, dynamic_src: Tensor, static_mask: Tensor) -> Tensor:
    """Targets (B, T, F): static factors from one labels tensor, dynamic factors from another."""
    return torch.where(static_mask, static_src, dynamic_src)


@torch.no_grad()
def generate(model, test: str, batch: dict, partner: dict | None = None) -> tuple[Tensor, Tensor] | None:
    """(generated frames (B, T, C, H, W), target labels (B, T, F)) for one test, or None if the batch
    lacks what the test needs (e.g. no paired twins). `partner`: the swap partners' batch."""
    x, labels = batch["x"], batch["labels"]
    if test in ("reconstruction", "reconstruction_mean"):
        codes = model.encode(x, mean=test == "reconstruction_mean")
        return model.decode(codes.f, codes.lam), labels
    if test in SWAP_TESTS:
        mean = test == "swap_mean"
        f = model.encode(x, mean=mean).f
        return model.decode(f, model.encode(partner["x"], mean=mean).lam), partner["labels"]
    if test == "sample_dynamics":
        f = model.encode(x).f
        return model.decode(f, model.sample_dynamics(x.shape[0], x.shape[1]).to(f.dtype)), labels
    if test == "sample_dynamics_mean":
        f = model.encode(x, mean=True).f
        return model.decode(f, model.sample_dynamics(x.shape[0], x.shape[1], mean=True).to(f.dtype)), labels
    if test == "sample_static":
        lam = model.encode(x, mean=True).lam
        return model.decode(model.sample_static(x.shape[0]).to(lam.dtype), lam), labels
    if test == "paired":
        if "x_same_static" not in batch:
            return None
        f = model.encode(batch["x_same_static"]).f
        lam = model.encode(batch["x_same_dyn"]).lam
        return model.decode(f, lam), labels
    raise ValueError(f"unknown evaluation test {test!r}; expected one of {TESTS}")


def _summarise(per_repeat: list[dict[str, Tensor]]) -> dict[str, dict[str, float]]:
    keys = per_repeat[0].keys()
    out = {}
    for k in keys:
        v = torch.stack([r[k].double() for r in per_repeat])
        out[k] = {"mean": float(v.mean()), "std": float(v.std(unbiased=True)) if len(v) > 1 else 0.0}
    return out


@torch.no_grad()
def evaluate(
    model,
    datamodule,
    judge,
    split: str = "test",
    repeats: int = 5,
    tests: tuple[str, ...] = TESTS,
    max_sequences: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Run the protocol on `split` of an `IndexedDataModule`; returns {"<test>/<metric>": {mean, std}}.

    Args:
        model: an `SDCD` (anything with encode/decode/sample_static/sample_dynamics).
        datamodule: labelled data with `.batch(split, index, device)`, `.factors`, `.split_size(split)`.
        judge: a trained judge for that data (`sdcd.judge.load_judge`).
        split: which split to score.
        repeats: R, independent repetitions with fresh random draws.
        tests: which tests to run (paired is skipped for data without twins).
        max_sequences: score only the first N sequences of the split (a fixed validation subset).
        batch_size: sequences per batch (default: the data module's eval batch size).
        seed: seeds the draws (partners, noise, prior samples), offset by rank.
        rank, world_size: this process's shard of the split (every rank must call this).
        progress: show a progress bar.
    """
    if repeats < 1:
        raise ValueError(f"evaluation repeats must be ≥ 1, got {repeats}")
    unknown = set(tests) - set(TESTS)
    if unknown:
        raise ValueError(f"unknown evaluation tests {sorted(unknown)}; expected a subset of {TESTS}")
    device = next(model.parameters()).device
    n = datamodule.split_size(split)
    if max_sequences is not None:
        n = min(n, max_sequences)
    bs = batch_size or getattr(datamodule, "eval_batch_size", 64)
    shards = torch.arange(rank, n, world_size).split(bs)
    factors = datamodule.factors
    static_mask = torch.tensor([f.static for f in factors], device=device)
    metrics = {
        (t, r): JudgeMetrics(judge, factors, validate_args=False).to(device) for t in tests for r in range(repeats)
    }
    was_training = model.training
    model.eval()
    bar = _progress(progress, len(shards) * repeats, f"evaluating {split}")
    needs_partner = bool(SWAP_TESTS & set(tests))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for r in range(repeats):
                # partners are drawn over the whole split (so batching never matters), the same on
                # every rank; the model's own noise differs per rank
                partners = derangement(n, "cpu", torch.Generator().manual_seed(seed * 1000 + r))
                torch.manual_seed(seed * 1000 + r * 97 + rank * 7919)
                for index in shards:
                    batch = datamodule.batch(split, index, device=device)
                    partner = datamodule.batch(split, partners[index], device=device) if needs_partner else None
                    for t in tests:
                        out = generate(model, t, batch, partner)
                        if out is None:
                            continue
                        x_gen, target = out
                        if t in SWAP_TESTS:  # static factors against A, dynamic ones against the partner B
                            target = _mix_labels(batch["labels"], target, static_mask)
                        metrics[t, r].update(x_gen.float().clamp(0, 1), target)
                    bar.advance()
    finally:
        model.train(was_training)
        bar.close()
    results: dict[str, dict[str, float]] = {}
    for t in tests:
        per_repeat = [metrics[t, r].compute() for r in range(repeats)]  # collective on every rank
        if float(per_repeat[0]["n/sequences"]) == 0:
            continue  # e.g. no twins in this data
        for k, v in _summarise(per_repeat).items():
            results[f"{t}/{k}"] = v
    results.update(intervention_scores(results, factors))
    if "swap/acc/static" in results and "swap/acc/dynamic" in results:
        s, d = results["swap/acc/static"], results["swap/acc/dynamic"]
        results["swap/acc/static_plus_dynamic"] = {"mean": s["mean"] + d["mean"], "std": math.hypot(s["std"], d["std"])}
    return results


# Which factors must follow the code a test keeps ("kept"), and which must not (judged against A, they
# should be at chance: the code that carries them was resampled).
_KEPT = {"sample_static": "dynamic", "sample_dynamics": "static", "sample_dynamics_mean": "static"}


def intervention_score(acc: dict[str, float], factors, kept: str | None) -> float:
    """MSD-Benchmark's intervention score for one test: 1 − (mean error on the kept factors + mean
    error on the others) / 2, where a kept factor's ideal accuracy is 1 and another's is chance
    (1 / its number of classes); error = |accuracy − ideal|. `kept`: "static", "dynamic", or None
    when every factor is judged against the source it should follow (swap, paired), so that the
    score is 1 − the mean error over all factors."""
    def is_kept(f):
        return kept is None or f.static == (kept == "static")

    err_kept = [1 - acc[f.name] for f in factors if is_kept(f)]
    err_other = [abs(acc[f.name] - 1 / f.n_classes) for f in factors if not is_kept(f)]
    if not err_other:
        return 1 - sum(err_kept) / len(err_kept)
    return 1 - (sum(err_kept) / len(err_kept) + sum(err_other) / len(err_other)) / 2


def intervention_scores(results: dict[str, dict[str, float]], factors) -> dict[str, dict[str, float]]:
    """`<test>/intervention` for every test in `results` (computed from the mean accuracies; std 0)."""
    out = {}
    for test in TESTS:
        if f"{test}/acc/{factors[0].name}" not in results:
            continue
        acc = {f.name: results[f"{test}/acc/{f.name}"]["mean"] for f in factors}
        out[f"{test}/intervention"] = {"mean": intervention_score(acc, factors, _KEPT.get(test)), "std": 0.0}
    return out


@torch.no_grad()
def peers_protocol(model, datamodule, judge, factor: str = "action", repeats: int = 5, batch_size: int = 128,
                   seed: int = 0, progress: bool = False) -> dict[str, dict[str, float]]:
    """The C-DSVAE/SPYL/DBSE "action" test on the test split (one process).

    Class-balanced subset (the first n sequences of each class of `factor`, n = the smallest class
    count), batches of `batch_size` with drop_last, posterior-mean dynamics with a static code drawn
    from the prior; accuracy, IS, H(y|x), H(y) of the `factor` head; mean ± std over repeats.
    """
    names = [f.name for f in datamodule.factors]
    if factor not in names:
        raise ValueError(f"peers protocol: factor {factor!r} not in the data's factors {names}")
    i = names.index(factor)
    device = next(model.parameters()).device
    n = datamodule.split_size("test")
    labels = torch.cat([datamodule.batch("test", idx)["labels"][:, 0, i] for idx in torch.arange(n).split(512)])
    counts = torch.bincount(labels, minlength=datamodule.factors[i].n_classes)
    m = int(counts[counts > 0].min())
    present = [c for c in range(len(counts)) if counts[c] > 0]
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:m] for c in present]).sort().values
    batches = [b for b in keep.split(batch_size) if len(b) == batch_size]  # drop_last
    if not batches:
        raise ValueError(f"peers protocol: the balanced subset ({len(keep)} sequences) is smaller than one "
                         f"batch of {batch_size}")
    was_training = model.training
    model.eval()
    per_repeat = []
    bar = _progress(progress, len(batches) * repeats, "peers protocol")
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(repeats):
                metric = JudgeMetrics(judge, datamodule.factors, validate_args=False, sync_on_compute=False).to(device)
                for index in batches:
                    batch = datamodule.batch("test", index, device=device)
                    x_gen, target = generate(model, "sample_static", batch)
                    metric.update(x_gen.float().clamp(0, 1), target)
                    bar.advance()
                out = metric.compute()
                per_repeat.append({k: out[f"{k}/{factor}"] for k in ("acc", "is", "h_yx", "h_y")})
    finally:
        model.train(was_training)
        bar.close()
    return {f"peers/{k}/{factor}": v for k, v in _summarise(per_repeat).items()} | {
        "peers/n_sequences": {"mean": float(len(batches) * batch_size), "std": 0.0}
    }


class _progress:
    """A rich progress bar that degrades to nothing (non-interactive runs, tests)."""

    def __init__(self, enabled: bool, total: int, what: str):
        self._p = None
        if enabled:
            from rich.progress import Progress

            self._p = Progress(transient=True)
            self._p.start()
            self._task = self._p.add_task(what, total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
