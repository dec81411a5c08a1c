"""Judge-based metrics as torchmetrics `Metric`s with fixed-size, sum-reduced states.

`FactorScores` accumulates from judge logits; `JudgeMetrics` holds a frozen judge and accumulates
from videos. Per factor `<f>` (keys get the metric's `prefix`):

    acc/<f>    accuracy of the argmax
    acc1/<f>   ±1-bin accuracy (ordinal factors)
    bacc/<f>   adjusted balanced accuracy, sklearn's `balanced_accuracy_score(adjusted=True)`: mean
               per-class recall over the classes present in the targets, rescaled so chance is 0
    r2/<f>     R² of the softmax expectation Σ_k k·p_k against the class index (ordinal factors),
               sklearn's `r2_score` (1 if the targets are constant and predicted exactly, else 0)
    is/<f>     exp(E KL(p(y|x) ‖ p(y))), p(y) the mean prediction; with eps=1e-16 as the peer code
    h_yx/<f>   H(y|x) = mean entropy of the prediction
    h_y/<f>    H(y)   = entropy of the mean prediction
    acc/static, acc/dynamic   mean accuracy over static / dynamic factors
    n/sequences               number of sequences counted

Sequence-level heads (static factors, and dynamic ones constant by construction such as the Sprites
action) are scored once per sequence against the first frame's target; per-frame heads once per
frame. All states are sums, so results are identical whatever the batching or number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from sdcd.data_modules.base import Factor

EPS = 1e-16
_R2_SUMS = 5  # Σy, Σy², Σŷ, Σŷ², Σyŷ


def distributed_valid_mask(
    batch_idx: int,
    batch_size: int,
    n_rows: int,
    dataset_size: int,
    rank: int,
    world_size: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n_rows,) bool: False for the rows a `DistributedSampler` (drop_last=False) added as padding.

    The sampler pads the (possibly shuffled) index list to a multiple of `world_size` by repeating
    its head, then gives rank r the positions r, r+W, r+2W, ...; position p is padding iff p >= n.
    Row j of batch `batch_idx` on this rank is its sampler item k = batch_idx*batch_size + j.
    No host sync. With one process (or an unpadded sampler) every row is valid.

    Args:
        batch_idx: index of the batch in this rank's loader.
        batch_size: the loader's batch size (not the size of a short last batch).
        n_rows: rows in this batch.
        dataset_size: length of the un-padded dataset.
        rank: global rank; world_size: number of ranks.
    """
    k = batch_idx * batch_size + torch.arange(n_rows, device=device)
    return rank + k * world_size < dataset_size


class FactorScores(Metric):
    """Per-factor accuracy, balanced accuracy, R², IS, H(y|x), H(y) from judge logits.

    `update(logits, labels, valid=None)`: `logits` is a list in factor order of (B, K) for sequence
    heads or (B, T, K) for frame heads; `labels` (B, T, F) int64 are the targets each factor is
    judged against (ordered as `factors`); `valid` (B,) bool excludes sequences (e.g. sampler padding,
    see `distributed_valid_mask`).

    Args:
        factors: the factors, in label order.
        sequence_level: per factor, whether its head is per sequence (default: the static factors).
        prefix: prepended to every key of `compute()`.
        validate_args: check label ranges in `update` (one host sync per call); shapes are always checked.
        kwargs: torchmetrics Metric options (sync_on_compute, process_group, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        factors: Sequence[Factor],
        sequence_level: Sequence[bool] | None = None,
        prefix: str = "",
        validate_args: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.factors = tuple(factors)
        if not self.factors:
            raise ValueError("FactorScores needs at least one factor")
        self.sequence_level = (
            tuple(sequence_level) if sequence_level is not None else tuple(f.static for f in self.factors)
        )
        if len(self.sequence_level) != len(self.factors):
            raise ValueError(
                f"sequence_level has {len(self.sequence_level)} entries, "
                f"expected one per factor ({len(self.factors)})"
            )
        self.prefix = prefix
        self.validate_args = validate_args
        for i, f in enumerate(self.factors):
            z = torch.zeros
            self.add_state(f"cm{i}", z(f.n_classes * f.n_classes, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"psum{i}", z(f.n_classes, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"plogp{i}", z((), dtype=torch.float64), dist_reduce_fx="sum")
            if f.ordinal:
                self.add_state(f"r2sums{i}", z(_R2_SUMS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_seq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # torch.multiprocessing (ddp_spawn on CPU) unpickles tensors into memory shared by all ranks;
        # private copies keep each rank's sums its own
        for key in self._defaults:
            setattr(self, key, getattr(self, key).clone())

    # -- update ---------------------------------------------------------------------------------
    def _check(self, logits: Sequence[Tensor], labels: Tensor, valid: Tensor | None) -> None:
        nf = len(self.factors)
        if len(logits) != nf:
            raise ValueError(f"logits: expected one tensor per factor ({nf}), got {len(logits)}")
        if labels.ndim != 3 or labels.shape[2] != nf or labels.is_floating_point():
            raise ValueError(
                f"labels: expected integer (B, T, {nf}) per-frame targets, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        b, t = labels.shape[:2]
        for f, lg, s in zip(self.factors, logits, self.sequence_level, strict=True):
            want = (b, f.n_classes) if s else (b, t, f.n_classes)
            if tuple(lg.shape) != want:
                raise ValueError(f"logits for '{f.name}': expected shape {want}, got {tuple(lg.shape)}")
        if valid is not None and (valid.shape != (b,) or valid.dtype != torch.bool):
            raise ValueError(f"valid: expected a ({b},) bool mask, got {valid.dtype} {tuple(valid.shape)}")
        if self.validate_args:
            k = torch.tensor([f.n_classes for f in self.factors], device=labels.device)
            bad = ((labels < 0) | (labels >= k)).flatten(0, 1).any(0).tolist()
            if any(bad):
                names = [
                    f"{f.name} (0..{f.n_classes - 1})" for f, x in zip(self.factors, bad, strict=True) if x
                ]
                raise ValueError(f"labels out of range for factors {names}")

    def update(self, logits: Sequence[Tensor], labels: Tensor, valid: Tensor | None = None) -> None:
        self._check(logits, labels, valid)
        b, t = labels.shape[:2]
        w = (
            torch.ones(b, dtype=torch.float64, device=labels.device)
            if valid is None
            else valid.to(torch.float64)
        )
        self.n_seq += w.sum()
        for i, (f, lg, s) in enumerate(zip(self.factors, logits, self.sequence_level, strict=True)):
            k = f.n_classes
            y = labels[:, 0, i] if s else labels[:, :, i].reshape(-1)  # (N,) rows: sequences or frames
            wi = w if s else w.repeat_interleave(t)  # (N,)
            lg = lg.reshape(-1, k).double()  # (N, K)
            p = lg.softmax(-1)
            pred = lg.argmax(-1)
            getattr(self, f"cm{i}").index_add_(0, y * k + pred, wi)
            getattr(self, f"psum{i}").add_(wi @ p)
            getattr(self, f"plogp{i}").add_(wi @ (p * (p + EPS).log()).sum(-1))
            if f.ordinal:
                yf = y.double()
                yhat = p @ torch.arange(k, dtype=torch.float64, device=p.device)  # expected class index
                cols = torch.stack([yf, yf * yf, yhat, yhat * yhat, yf * yhat], 1)  # (N, 5)
                getattr(self, f"r2sums{i}").add_(wi @ cols)

    # -- compute --------------------------------------------------------------------------------
    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        static, dynamic = [], []
        for i, f in enumerate(self.factors):
            k, name = f.n_classes, f.name
            cm = getattr(self, f"cm{i}").view(k, k)  # rows: target, columns: prediction
            n = cm.sum()
            acc = cm.diagonal().sum() / n
            out[f"acc/{name}"] = acc
            (static if f.static else dynamic).append(acc)
            out[f"bacc/{name}"] = _adjusted_balanced_accuracy(cm)
            if f.ordinal:
                near = torch.ones(k, k, dtype=torch.bool, device=cm.device).triu(-1).tril(1)  # |i-j| <= 1
                out[f"acc1/{name}"] = cm[near].sum() / n
                out[f"r2/{name}"] = _r2(getattr(self, f"r2sums{i}"), n)
            pbar = getattr(self, f"psum{i}") / n
            h_yx = -getattr(self, f"plogp{i}") / n
            h_y = -(pbar * (pbar + EPS).log()).sum()
            out[f"is/{name}"] = (h_y - h_yx).exp()
            out[f"h_yx/{name}"] = h_yx
            out[f"h_y/{name}"] = h_y
        if static:
            out["acc/static"] = torch.stack(static).mean()
        if dynamic:
            out["acc/dynamic"] = torch.stack(dynamic).mean()
        out["n/sequences"] = self.n_seq.clone()
        return {self.prefix + key: v.float() for key, v in out.items()}


def _adjusted_balanced_accuracy(cm: Tensor) -> Tensor:
    # sklearn: mean recall over classes present in y_true, then (score - 1/K') / (1 - 1/K');
    # NaN when fewer than two classes are present (sklearn divides by zero there too)
    support = cm.sum(1)
    present = support > 0
    kp = present.sum()
    recall = cm.diagonal() / support.clamp_min(1)
    bacc = (recall * present).sum() / kp
    chance = 1.0 / kp
    return torch.where(kp > 1, (bacc - chance) / (1 - chance), torch.full_like(bacc, math.nan))


def _r2(sums: Tensor, n: Tensor) -> Tensor:
    sy, syy, sp, spp, syp = sums.unbind()
    ss_res = syy - 2 * syp + spp
    ss_tot = syy - sy * sy / n
    r2 = 1 - ss_res / ss_tot.clamp_min(1e-300)
    # sklearn's force_finite: constant targets give 1 if predicted exactly, else 0
    const = ss_tot <= 1e-9 * n
    return torch.where(const, (ss_res <= 1e-9 * n).to(r2.dtype), r2)


class JudgeMetrics(FactorScores):
    """`FactorScores` of a frozen judge run on videos: `update(x, labels, valid=None)`.

    `x` (B, T, C, H, W) in [0, 1] are the videos to judge (generated or real), `labels` (B, T, F) the
    targets each factor is judged against (e.g. the source sequence's labels for a swap). The judge
    is held like torchmetrics' FID holds its network: it is frozen in place (eval mode, no grads),
    runs without autocast in float32, moves with `.to(device)`, but is *not* a registered submodule,
    so it is absent from the parent's `state_dict`/checkpoint, `parameters()` and `train()`. One judge
    may be shared by several JudgeMetrics.

    Args:
        judge: a trained `sdcd.judge.Judge` (e.g. from `load_judge`).
        factors: optional check that the judge's factors are these (names and class counts).
        prefix: prepended to every key of `compute()`.
        validate_args: check label ranges in `update` (one host sync per call).
        kwargs: torchmetrics Metric options.
    """

    def __init__(
        self,
        judge: nn.Module,
        factors: Sequence[Factor] | None = None,
        prefix: str = "",
        validate_args: bool = True,
        **kwargs,
    ):
        jf = tuple(judge.factors)

        def spec(fs: Sequence[Factor]) -> list[tuple[str, int]]:
            return [(f.name, f.n_classes) for f in fs]

        if factors is not None and spec(factors) != spec(jf):
            raise ValueError(
                f"judge factors {[f.name for f in jf]} do not match "
                f"the data factors {[f.name for f in factors]}"
            )
        super().__init__(jf, judge.sequence_level, prefix=prefix, validate_args=validate_args, **kwargs)
        judge.eval().requires_grad_(False)
        object.__setattr__(self, "_judge", judge)  # bypass nn.Module registration (see class docstring)

    @property
    def judge(self) -> nn.Module:
        return self._judge

    def _apply(self, fn, *args, **kwargs):
        this = super()._apply(fn, *args, **kwargs)
        # follow device moves only: the judge keeps float32 whatever dtype the parent is cast to
        device = fn(torch.zeros(1, device=self.device)).device
        self._judge.to(device)
        return this

    def train(self, mode: bool = True):
        super().train(mode)
        self._judge.eval()
        return self

    def update(self, x: Tensor, labels: Tensor, valid: Tensor | None = None) -> None:
        self._judge.check_input(x)
        if labels.ndim != 3 or labels.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"labels: expected (B, T, F) = ({x.shape[0]}, {x.shape[1]}, F), got {tuple(labels.shape)}"
            )
        self._judge.eval()
        param = next(self._judge.parameters())
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            logits = self._judge(x.to(device=param.device, dtype=param.dtype))
        super().update(logits, labels.to(param.device), None if valid is None else valid.to(param.device))
