"""The non-finite step guard: a step whose loss or gradient is not finite never reaches the weights, and
training stops with an error naming the bad loss term after K such steps in a row.

Nothing here syncs the host inside a step: the verdict goes to the fused Adam kernel as its `found_inf`
input (the kernel then skips the whole update), and the streak is read on the host once every K steps.
"""

from __future__ import annotations

import torch

GUARDED_TERMS = ("sse", "kl", "nll_flow", "nll_prior")  # the optimised loss terms


class NonFiniteLossError(RuntimeError):
    """Raised after `nonfinite_patience` consecutive non-finite training steps."""


class NonFiniteGuard:
    """Device-side bookkeeping of bad steps (all tensors, no host sync)."""

    def __init__(self, terms: tuple[str, ...] = GUARDED_TERMS):
        self.terms = terms
        self.state: dict[str, torch.Tensor] = {}

    def record_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Remember which optimised terms of this step are non-finite: (len(terms),) bool."""
        self.state["bad_terms"] = torch.stack([~torch.isfinite(terms[k].detach()) for k in self.terms])

    def skip_if_nonfinite(self, optimizer, grad_norm: torch.Tensor, step: int) -> torch.Tensor:
        """Tell the fused optimiser to skip this update if the loss or the gradient is not finite;
        returns the running count of skipped steps (a device tensor, for logging)."""
        g = self.state
        bad_terms = g.get("bad_terms", torch.zeros(len(self.terms), dtype=torch.bool, device=grad_norm.device))
        bad = bad_terms.any() | ~torch.isfinite(grad_norm)
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None  # fused Adam skips the whole update
        zero = torch.zeros((), device=grad_norm.device)
        g["skipped"] = g.get("skipped", zero) + bad
        streak = g.get("streak", zero)
        g["streak_start"] = torch.where(bad & (streak == 0), float(step), g.get("streak_start", zero))
        g["streak"] = (streak + 1) * bad
        # what went bad first in this streak: the loss terms, or (all False) only the gradient
        g["culprit"] = torch.where(bad & (streak == 0), bad_terms, g.get("culprit", bad_terms))
        return g["skipped"]

    def check(self, step: int, patience: int) -> None:
        """Every `patience` steps (one host sync): raise if the last `patience` steps were all bad."""
        g = self.state
        if not patience or "streak" not in g or step % patience:
            return
        if int(g["streak"]) >= patience:
            names = [name for name, b in zip(self.terms, g["culprit"].tolist()) if b]
            what = (f"non-finite loss term(s) {', '.join(names)}" if names
                    else "a non-finite gradient (finite loss terms)")
            raise NonFiniteLossError(
                f"{int(g['streak'])} consecutive training steps had a non-finite loss or gradient (none of them "
                f"changed the weights); it started at step {int(g['streak_start'])} with {what}. "
                f"{int(g['skipped'])} steps were skipped in total. Lower model.lr or model.flow_weight, or raise "
                f"model.nonfinite_patience to let training try to recover."
            )
