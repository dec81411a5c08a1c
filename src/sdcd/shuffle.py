"""The shuffle constraint: frame-wise static codes permuted along time, so that frame t is modelled
given the static code of another frame of the same sequence and only what is constant over the
sequence is worth keeping in them. When it applies is `callbacks.shuffle.ShuffleCallback`'s business."""

from __future__ import annotations

import torch
from einops import repeat

SHUFFLE_MODES = ("batch", "sequence")


def permute_along_time(f_t: torch.Tensor, mode: str = "batch",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """f_t: (B, T, D) permuted along T: one permutation for the whole batch ("batch", the paper), or
    one per sequence ("sequence", drawn from `generator` when it is on f_t's device)."""
    b, t, _ = f_t.shape
    if mode == "batch":
        return f_t[:, torch.randperm(t, device=f_t.device)]
    gen = generator if generator is not None and generator.device == f_t.device else None
    perm = torch.rand(b, t, device=f_t.device, generator=gen).argsort(dim=1)  # (B, T)
    return torch.gather(f_t, 1, repeat(perm, "b t -> b t d", d=f_t.shape[-1]))
