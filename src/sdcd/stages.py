"""The two-stage recipe of SDCD (`model.stage`).

SDCD's frame autoencoder learns from the reconstruction only: its features are detached before the
static encoder and the flow. So the paper's objective can also be trained in two runs:

- `stage=autoencoder` trains only the frame encoder, mean net and decoder (the reconstruction);
- `stage=disentangle` loads those from `model.autoencoder_checkpoint`, freezes them (the paper
  figure's "fixed encoder") and trains the static encoder, static prior, flow and LSTM prior. Its
  steps skip the decoder and every conv backward pass; with `model.feature_cache` (default) the frozen
  feature means of the whole training split are computed once, at the first step (and of one
  colour-changed copy of each sequence, fixed per sequence, when the augmentation term is on with
  `augmentation_copies=fixed`), and each step adds the unit feature noise to its rows, so no pixel is
  read again (with "fresh" copies, only the copies are encoded, at every step).

`stage=joint` (default) trains everything at once, as the paper does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

STAGES = ("joint", "autoencoder", "disentangle")
AUTOENCODER = ("encoder", "mean_net", "decoder")  # the frame autoencoder's submodules


def check_stage_args(stage: str, autoencoder_checkpoint: str | None, autoencoder_frames: int = 0,
                     n_frames: int = 2) -> None:
    """Stage 2 needs the checkpoint of a stage-1 (or joint) run, and only stage 1 may subsample frames:
    a one-line error otherwise."""
    if stage == "disentangle" and not autoencoder_checkpoint:
        raise ValueError("model.stage=disentangle needs model.autoencoder_checkpoint (an SDCD checkpoint of a "
                         "stage=autoencoder or joint run)")
    if autoencoder_frames and stage != "autoencoder":
        raise ValueError(f"model.autoencoder_frames={autoencoder_frames} subsamples the frames of stage 1 only: "
                         f"needs model.stage=autoencoder, got {stage}")
    if not 0 <= autoencoder_frames <= n_frames:
        raise ValueError(f"model.autoencoder_frames must be between 0 (all) and model.n_frames={n_frames}, "
                         f"got {autoencoder_frames}")


def sample_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """x: (B, T, C, H, W) → (B, k, C, H, W): k distinct frames of each sequence, drawn at random per
    row (in time order). Stage 1 reconstructs frames one by one, so which k it sees is all that changes."""
    b, t = x.shape[:2]
    if k >= t:
        return x
    idx = torch.rand(b, t, device=x.device).argsort(1)[:, :k].sort(1).values  # (B, k)
    return x[torch.arange(b, device=x.device)[:, None], idx]


def load_autoencoder_for_fit(model, stage: str) -> None:
    """From `setup`: a stage-2 fit that starts from scratch loads its frozen autoencoder (a resumed run
    has the frozen weights in its checkpoint; evaluation gets them from the checkpoint it loads)."""
    if (stage == "fit" and model.hparams.stage == "disentangle" and model._trainer is not None
            and not model.trainer.ckpt_path):
        load_autoencoder(model, model.hparams.autoencoder_checkpoint)


def freeze_autoencoder(model: torch.nn.Module) -> None:
    for name in AUTOENCODER:
        getattr(model, name).requires_grad_(False)


def load_autoencoder(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy the frame encoder, mean net and decoder weights of an SDCD checkpoint file into `model`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.autoencoder_checkpoint='{path}' does not exist (expected the .ckpt "
                                f"file of a stage=autoencoder or joint run)")
    state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    for name in AUTOENCODER:
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        try:
            getattr(model, name).load_state_dict(part)
        except RuntimeError as err:
            raise ValueError(f"model.autoencoder_checkpoint='{path}': its {name} does not fit this model "
                             f"(same base_channels, latent_dim, frame_size and channels needed): "
                             f"{str(err).splitlines()[0]}") from None


class FeatureCache:
    """Stage 2's frozen feature means, per split, computed on first use (kept in memory, never saved)."""

    def __init__(self) -> None:
        self._features: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def get(self, model, datamodule, split: str, index: torch.Tensor,
            copy: Callable | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feature means (B, T, D) of rows `index` of `split`, and of their colour-changed copies
        (`copy(x, generator)`, e.g. `SDCD.colour_copy`; one fixed draw per sequence; None when `copy`
        is None)."""
        if split not in self._features:
            n, parts, aug = datamodule.split_size(split), [], []
            gen = torch.Generator().manual_seed(0)  # one fixed draw per sequence
            rank_zero_info(f"sdcd: stage 2: caching the frozen autoencoder's features of the {n} {split} sequences")
            for rows in torch.arange(n).split(256):
                x = datamodule.batch(split, rows, device=model.device)["x"]
                parts.append(model.frame_features(x, noise=False).float())
                if copy is not None:
                    aug.append(model.frame_features(copy(x, gen), noise=False).float())
            self._features[split] = torch.cat(parts)
            if aug:
                self._features[split + "/aug"] = torch.cat(aug)
        index = index.to(self._features[split].device)
        extra = self._features.get(split + "/aug")
        return self._features[split][index], None if extra is None else extra[index]
