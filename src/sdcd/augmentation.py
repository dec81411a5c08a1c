"""The colour-augmentation term: a named departure from the paper (off by default), after C-DSVAE's
"motion augmentation". Each training sequence is also encoded with its RGB channels permuted (colours
change, shapes and motion do not), and the two copies' dynamic codes must agree. What it does on
Sprites: README, "Sprites on a CPU", and docs/sprites.md.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

AUGMENTATION_LOSSES = ("infonce", "mse")
_PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))  # every non-identity one


def permute_colours(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, T, C=3, H, W) with each sequence's colour channels permuted by a random non-identity
    permutation (the same for all its frames)."""
    perms = torch.tensor(_PERMUTATIONS, device=x.device)
    if x.shape[2] != 3:
        raise ValueError(f"model.augmentation_weight > 0 permutes RGB channels: needs 3 channels, got {x.shape[2]}")
    choice = torch.randint(0, len(perms), (x.shape[0],), generator=generator,
                           device="cpu" if generator is not None else x.device)
    idx = perms[choice.to(x.device)]  # (B, 3)
    return torch.gather(x, 2, idx[:, None, :, None, None].expand(-1, x.shape[1], -1, *x.shape[3:]))


def augmentation_term(lam: torch.Tensor, lam_aug: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    """How far the dynamic codes λ: (B, T, D) of sequences and of their colour-permuted copies disagree.

    "mse": the squared distance, summed over frames and dimensions, batch-averaged. "infonce": each
    sequence's λ must pick out its copy among the batch's (cosine similarity of the flattened codes /
    temperature, cross-entropy; C-DSVAE's contrastive form)."""
    if loss == "mse":
        return ((lam.float() - lam_aug.float()) ** 2).sum((1, 2)).mean()
    a = F.normalize(lam.flatten(1).float(), dim=1)
    b = F.normalize(lam_aug.flatten(1).float(), dim=1)
    logits = a @ b.T / temperature  # (B, B): row i should pick column i
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
