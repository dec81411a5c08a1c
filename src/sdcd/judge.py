"""Judge classifiers: supervised per-factor classifiers that score generated videos.

One architecture for every dataset, built from the data module's `factors` (the design of the Sprites
judge `classifier_Sprite_all` used by C-DSVAE/SPYL/DBSE, generalised):

    frames --DCGAN conv encoder--> (B, T, 128) --BiLSTM(256)--> per-frame (B, T, 512)
                                                           \\-> sequence (B, 512) = [fwd at T-1, bwd at 0]
    sequence heads (static factors, and dynamic ones listed in `sequence_level_factors`): (B, K)
    frame heads (other dynamic factors): (B, T, K)

Every head classifies (cross-entropy), so every factor has an accuracy; `sdcd.metrics` derives R²
for ordinal factors from the softmax expectation.

A judge file (`save_judge`) records the weights, the architecture, the factor list, the config of the
data it was trained on (`data_signature`) and its scores on the real test split. `load_judge` refuses
a judge trained on other data.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdcd.data_modules.base import Factor, data_signature
from sdcd.io import atomic_torch_save

JUDGE_FORMAT = "sdcd-judge"
JUDGE_FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------
class FrameEncoder(nn.Module):
    """DCGAN frame encoder: stride-2 4×4 conv blocks down to 4×4, then a 4×4 valid conv to `embed_dim`.

    Args:
        frame_size: side of the square input frames; a power of two, at least 8.
        in_channels: input channels.
        base_channels: width of the first block; block i has `base_channels * 2**i` channels.
        embed_dim: output features per frame.
    """

    def __init__(
        self, frame_size: int = 64, in_channels: int = 3, base_channels: int = 64, embed_dim: int = 128
    ):
        super().__init__()
        n_blocks = round(math.log2(frame_size)) - 2 if frame_size > 0 else 0
        if frame_size < 8 or 2 ** (n_blocks + 2) != frame_size:
            raise ValueError(f"judge frame_size must be a power of two >= 8, got {frame_size}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(n_blocks):
            c_out = base_channels * 2**i
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c_in = c_out
        # after the blocks the map is 4×4; a valid 4×4 conv makes it 1×1
        layers += [nn.Conv2d(c_in, embed_dim, 4, 1, 0), nn.BatchNorm2d(embed_dim), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, H, W) -> (N, embed_dim)
        return self.net(x).flatten(1)


def _head(in_dim: int, hidden: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def _as_factor(f: Factor | dict) -> Factor:
    return f if isinstance(f, Factor) else Factor(**f)


class Judge(nn.Module):
    """Per-factor video classifier: conv frame encoder, BiLSTM over frames, one MLP head per factor.

    Static factors, and dynamic factors named in `sequence_level_factors` (constant over a sequence
    by construction, e.g. the Sprites action), are classified once per sequence from the 512-d
    sequence vector; the other dynamic factors once per frame from the BiLSTM output. Their targets
    are the first frame's label (sequence heads) or each frame's label (frame heads).

    Args:
        factors: the data module's factors, in label order.
        frame_size: side of the square frames.
        in_channels: frame channels.
        base_channels: width of the first conv block (64 in the reference judges).
        embed_dim: frame embedding size fed to the LSTM (128).
        hidden_size: LSTM hidden size per direction (256).
        head_hidden: hidden width of each head's MLP (256).
        sequence_level_factors: dynamic factors to classify per sequence instead of per frame.
    """

    def __init__(
        self,
        factors: Sequence[Factor | dict],
        frame_size: int = 64,
        in_channels: int = 3,
        base_channels: int = 64,
        embed_dim: int = 128,
        hidden_size: int = 256,
        head_hidden: int = 256,
        sequence_level_factors: Sequence[str] = (),
    ):
        super().__init__()
        self.factors = tuple(_as_factor(f) for f in factors)
        if not self.factors:
            raise ValueError("Judge needs at least one factor; the data module's `factors` is empty")
        names = [f.name for f in self.factors]
        unknown = sorted(set(sequence_level_factors) - set(names))
        if unknown:
            raise ValueError(
                f"judge sequence_level_factors {unknown} are not factors of the data; "
                f"expected some of {names}"
            )
        self.config = {
            "frame_size": frame_size,
            "in_channels": in_channels,
            "base_channels": base_channels,
            "embed_dim": embed_dim,
            "hidden_size": hidden_size,
            "head_hidden": head_hidden,
            "sequence_level_factors": list(sequence_level_factors),
        }
        self.sequence_level = tuple(f.static or f.name in sequence_level_factors for f in self.factors)
        self.encoder = FrameEncoder(frame_size, in_channels, base_channels, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleList(_head(2 * hidden_size, head_hidden, f.n_classes) for f in self.factors)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        c, s = self.config["in_channels"], self.config["frame_size"]
        return (c, s, s)

    def arch(self) -> dict[str, Any]:
        """Everything `Judge(**arch)` needs, as plain Python values (for the judge file)."""
        return {"factors": [dataclasses.asdict(f) for f in self.factors], **self.config}

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or tuple(x.shape[2:]) != self.frame_shape:
            raise ValueError(
                f"judge input must be (B, T, {', '.join(map(str, self.frame_shape))}) frames, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits per factor, in factor order: (B, K) for sequence heads, (B, T, K) for frame heads."""
        self.check_input(x)
        b, t = x.shape[:2]
        h = self.encoder(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, E)
        out, _ = self.lstm(h)  # (B, T, 2H)
        hs = self.lstm.hidden_size
        seq = torch.cat([out[:, -1, :hs], out[:, 0, hs:]], dim=-1)  # (B, 2H)
        return [head(seq if s else out) for head, s in zip(self.heads, self.sequence_level, strict=True)]


def judge_targets(judge: Judge, labels: Tensor) -> list[Tensor]:
    """Per-factor targets matching `judge(x)`: labels (B, T, F) -> (B,) or (B, T) per factor."""
    return [labels[:, 0, i] if s else labels[:, :, i] for i, s in enumerate(judge.sequence_level)]


# ---------------------------------------------------------------------------------------------------
# Dataset record, save / load
# ---------------------------------------------------------------------------------------------------
def _dataset_name(datamodule: Any) -> str:
    # MovingDSpritesDataModule -> dsprites, SpritesDataModule -> sprites (the `make judge DATA=` names)
    name = type(datamodule).__name__.lower().removesuffix("datamodule").removeprefix("moving")
    return name or "<dataset>"


def save_judge(
    judge: Judge, path: str | os.PathLike, data: dict[str, Any], test_scores: dict[str, float] | None = None
) -> Path:
    """Write a judge file atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    record = {
        "format": JUDGE_FORMAT,
        "version": JUDGE_FORMAT_VERSION,
        "arch": judge.arch(),
        "state_dict": {k: v.detach().cpu() for k, v in judge.state_dict().items()},
        "data": data,
        "test_scores": dict(test_scores or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_torch_save(record, path)
    return path


def _load_judge_file(path: Path, map_location) -> Any:
    """The loaded contents of a judge file (sdcd's or the public one), or a ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no judge file at '{path}'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"'{path}' is not a readable judge file ({type(err).__name__}: {err})") from err


def _check_record(record: Any, path: Path) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("format") != JUDGE_FORMAT:
        raise ValueError(f"'{path}' is not an sdcd judge file (expected a dict with format='{JUDGE_FORMAT}')")
    if record.get("version") != JUDGE_FORMAT_VERSION:
        raise ValueError(
            f"judge file '{path}' has format version {record.get('version')}, expected {JUDGE_FORMAT_VERSION}"
        )
    return record


def read_judge_record(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw judge file contents (weights, arch, data record, test scores), validated."""
    path = Path(path)
    return _check_record(_load_judge_file(path, map_location), path)


# The public Sprites judge of C-DSVAE/SPYL/DBSE (`sprite_judge.tar`, class `classifier_Sprite_all`,
# 5,263,073 parameters): the same network as `Judge` at the reference widths, under other names, and
# with its heads in the order (action, skin, pants, top, hair). sdcd's Sprites factor order is
# (skin, pants, top, hair, action): each sdcd factor and the name of its public head.
PUBLIC_SPRITES_HEADS = {"skin": "cls_skin", "pants": "cls_pant", "top": "cls_top", "hair": "cls_hair",
                        "action": "cls_action"}


def _public_state(obj: Any) -> dict[str, Tensor] | None:
    """The public judge's state dict inside a loaded file (raw, under 'state_dict', DataParallel's
    'module.' prefix removed), or None if `obj` is not such a file."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        return None
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}
    return state if "cls_action.0.weight" in state and "bilstm.weight_ih_l0" in state else None


def public_sprites_judge(state: dict[str, Tensor], factors: Sequence[Factor], path: str | os.PathLike = "") -> Judge:
    """A `Judge` with the weights of the public Sprites judge, heads mapped to sdcd's factor order."""
    names = [f.name for f in factors]
    if sorted(names) != sorted(PUBLIC_SPRITES_HEADS):
        raise ValueError(f"'{path}' is the public Sprites judge (C-DSVAE's sprite_judge.tar); it scores Sprites "
                         f"only (factors {list(PUBLIC_SPRITES_HEADS)}), not data with factors {names}")
    judge = Judge(factors, frame_size=64, in_channels=3, base_channels=64, embed_dim=128, hidden_size=256,
                  head_hidden=256, sequence_level_factors=["action"])
    mapped = {}
    for k, v in state.items():
        part, _, rest = k.partition(".")
        if part == "encoder":  # encoder.c<i>.main.<j> (blocks 1-4) and encoder.c5.<j> → encoder.net.<3(i-1)+j>
            block, _, tail = rest.partition(".")
            tail = tail.removeprefix("main.")
            j, _, leaf = tail.partition(".")
            mapped[f"encoder.net.{3 * (int(block[1:]) - 1) + int(j)}.{leaf}"] = v
        elif part == "bilstm":
            mapped[f"lstm.{rest}"] = v
        else:
            for i, name in enumerate(names):
                if part == PUBLIC_SPRITES_HEADS[name]:
                    mapped[f"heads.{i}.{rest}"] = v
    try:
        judge.load_state_dict(mapped)
    except RuntimeError as err:
        raise ValueError(f"'{path}' looks like the public Sprites judge but its weights do not fit "
                         f"classifier_Sprite_all: {str(err).splitlines()[0]}") from None
    return judge


def load_judge(
    path: str | os.PathLike,
    datamodule: Any | None,
    ignore: Iterable[str] = (),
    map_location: str | torch.device = "cpu",
) -> Judge:
    """Load a frozen-ready judge (eval mode) and check it was trained on `datamodule`'s data.

    Args:
        path: judge file written by `save_judge` (e.g. by `make judge DATA=dsprites`).
        datamodule: the data the judge will score; its `data_signature` must equal the recorded one
            except for the keys in `ignore`. None skips the check.
        ignore: signature keys allowed to differ (e.g. "n_train" to reuse a judge on a smaller run).
        map_location: where to load the weights.
    """
    path = Path(path)
    if not path.is_file():
        hint = _dataset_name(datamodule) if datamodule is not None else "<dataset>"
        raise FileNotFoundError(
            f"no judge file at '{path}'. Train one with `make judge DATA={hint}` "
            f"(it writes the judge_path set in experiments/judge_{hint}.yaml)."
        )
    loaded = _load_judge_file(path, map_location)  # read once, whichever kind of judge it is
    public = None if isinstance(loaded, dict) and loaded.get("format") == JUDGE_FORMAT else _public_state(loaded)
    if public is not None:  # the peers' judge: no data record, so check the factors only
        factors = getattr(datamodule, "factors", None) or [Factor(n, 9 if n == "action" else 6, n != "action")
                                                              for n in PUBLIC_SPRITES_HEADS]
        return public_sprites_judge(public, factors, path).to(map_location).eval()
    record = _check_record(loaded, path)
    if datamodule is not None:
        want, have, skip = data_signature(datamodule), record["data"], set(ignore)
        diff = sorted(k for k in set(want) | set(have) if k not in skip and want.get(k) != have.get(k))
        if diff:
            lines = "\n".join(
                f"  {k}: judge has {have.get(k, '<missing>')!r}, data has {want.get(k, '<missing>')!r}"
                for k in diff
            )
            raise ValueError(
                f"judge '{path}' was trained on a different dataset config; differing keys {diff}:\n{lines}\n"
                f"Train a judge for this data (`make judge DATA={_dataset_name(datamodule)}` with matching "
                f"data settings) or pass ignore={diff} if the difference is harmless."
            )
    judge = Judge(**record["arch"])
    judge.load_state_dict(record["state_dict"])
    return judge.to(map_location).eval()
