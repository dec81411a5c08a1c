"""Moving dSprites: 16-frame RGB videos of a coloured dSprites shape that moves, rendered from labels.

This is the data of Simon et al. (ECCV 2024), written from the description of the official
generator (see docs: paper-notes §3.2). Two variants exist:

* ``cond``: dynamics depend on statics. The position range shrinks with scale and so does the top
  speed. The orientation cycle depends on shape. Rotation happens in 65 % of sequences.
* ``simple``: every position at every scale, position speeds up to ±4, and orientation stays fixed.

Labels per frame are ``[color, shape, scale, orientation, posX, posY]`` (``FACTORS``). A split
stores them as one int8 table ``(N, T, 6)``. Frames are rendered from the labels on the labels'
device, one whole batch at a time. By default the renderer draws the shapes itself
(``render_procedural``). With ``npz_path`` it looks the masks up in the official dSprites array
(``render_from_masks``).

Procedural geometry. The frame spans [-1, 1]² and pixel centres sit at (i + 0.5)·2/H − 1.
* posX moves along the columns (left to right) and posY along the rows (top to bottom). The sprite
  centre is ``POS_EXTENT · (2·pos/31 − 1)``, so it lies in [-0.65, 0.65].
* Every shape fits in a disc of radius ``SPRITE_RADIUS · scale``, with scale in linspace(0.5, 1, 6).
  This holds in every orientation, and gives a radius of 0.30 at scale 1.
* The furthest a sprite can reach is therefore 0.65 + 0.30 = 0.95. The outermost pixel centre is at
  1 − 1/H, which is at least 0.98 for H ≥ 32. So even the largest sprite at an extreme position
  leaves the border pixels black, as the simple variant needs.
* Shapes, in sprite units where the bounding disc has radius 1 and the v axis points up:
  - square: half-side 1/√2;
  - ellipse: semi-axes 1 and ½, the long one along the orientation direction;
  - heart: a diamond with side 1, plus two discs of radius ½ on its upper edges.
  Their areas are 2, π/2 and 1 + π/4 times (radius·scale)².
* Orientation o is the angle 2π·o/39 (counter-clockwise). This matches dSprites, whose 40
  orientations are linspace(0, 2π, 40), so index 39 is the same angle as index 0.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile

import numpy as np
import torch

from sdcd.data_modules.base import Factor, IndexedDataModule

FACTORS: tuple[Factor, ...] = (
    Factor("color", 6, static=True),
    Factor("shape", 3, static=True),
    Factor("scale", 6, static=True, ordinal=True),
    Factor("orientation", 40, static=False, ordinal=True),
    Factor("posX", 32, static=False, ordinal=True),
    Factor("posY", 32, static=False, ordinal=True),
)
VARIANTS = ("cond", "simple")
COLORS_RGB256 = (
    (75, 159, 34),
    (236, 92, 146),
    (125, 131, 10),
    (108, 219, 255),
    (244, 113, 52),
    (160, 111, 238),
)
SCALES = tuple(float(s) for s in np.linspace(0.5, 1.0, 6))
# Number of orientation steps each shape cycles through (square, ellipse, heart): its symmetry.
ORIENTATION_CYCLE = (10, 20, 39)
ORIENTATION_STEP = 2 * math.pi / 39  # dSprites: linspace(0, 2π, 40)
# cond: top position speed for each scale index. simple: one top speed for every scale.
COND_POS_AMPLITUDE = (5, 5, 4, 4, 3, 3)
SIMPLE_POS_AMPLITUDE = 4
ORIENTATION_AMPLITUDE = 3
P_NO_ROTATION = 0.35
# Initial offsets along the speed triangle wave: uniform in {0..8} (position), {0..6} (orientation).
POS_SPEED_OFFSETS = 9
ORIENTATION_SPEED_OFFSETS = 7
SPRITE_RADIUS = 0.30
POS_EXTENT = 0.65

# The official array, and its index strides: (shape, scale, orientation, posX, posY).
NPZ_IMGS_SHAPE = (737280, 64, 64)
DSPRITES_SIZES = (3, 6, 40, 32, 32)
MIN_FRAME_SIZE = 8
_N_POS = 32


# ---------------------------------------------------------------------------------------------
# Label sequences (numpy, vectorised over sequences; the only loop is over time)
# ---------------------------------------------------------------------------------------------
def _check_variant(variant: str, arg: str = "variant") -> None:
    if variant not in VARIANTS:
        raise ValueError(f"{arg} must be one of {VARIANTS}, got {variant!r}")


def _check_n_frames(n_frames: int, arg: str = "n_frames") -> None:
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ValueError(
            f"{arg} must be an integer >= 2 (a video needs at least one transition), got {n_frames!r}"
        )


def _triangle(q: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """The speed at phase q of the cyclic wave amp, amp−1, …, −amp, …, amp−1 (period 4·amp)."""
    return np.abs(2 * amp - q) - amp


def simulate_dynamics(
    shape: np.ndarray, scale: np.ndarray, variant: str, n_frames: int, rng
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the dynamic factors of sequences with the given statics.

    Each dynamic factor has a phase on a cycle and a speed, which is the phase of a triangle wave.
    * Position: the phase p lies in [0, 2w), where w = hi − lo, and the position is
      lo + w − |w − p|. So moving p by k steps bounces off the walls.
    * Orientation: the phase is the orientation index itself, modulo the shape's cycle.
    * Per transition, every factor first moves by its current speed. Then the speed's phase moves
      by 0 (p = ½), +1 or −1 (p = ¼ each).

    Match with the official generator (np.roll of label and speed lists):
    * Our phases are its roll offsets with the sign flipped. Position lists are symmetric and the
      speed updates are ±1 symmetric, so the laws are the same.
    * The initial speed is the wave shifted by 0–8 steps (position) or 0–6 (orientation). For
      amplitude 5 that gives speeds 5…−3, for 4 it gives 4…−4, for 3 it gives 3…−3, −2, −1, and
      for orientation 3…−3.
    * Positive orientation speed turns the other way than in the official code. The orientation
      speed law is symmetric, so the distribution is unchanged.

    Args:
        shape: (N,) shape index per sequence.
        scale: (N,) scale index per sequence.
        variant: "cond" or "simple".
        n_frames: T, frames per sequence (T − 1 transitions).
        rng: anything `np.random.default_rng` accepts.

    Returns:
        dyn: (N, T, 3) int64 [orientation, posX, posY] per frame.
        speed: (N, T − 1, 3) int64, the speed used for each transition.
    """
    _check_variant(variant)
    _check_n_frames(n_frames)
    rng = np.random.default_rng(rng)
    shape = np.asarray(shape, dtype=np.int64)
    scale = np.asarray(scale, dtype=np.int64)
    n = shape.shape[0]
    cond = variant == "cond"

    lo = 2 * scale if cond else np.zeros(n, dtype=np.int64)  # (N,) lowest position
    width = (_N_POS - 1) - 2 * lo  # hi − lo
    # A start phase in [0, w] covers every allowed position exactly once: a uniform start.
    pos_phase = rng.integers(0, width + 1, size=(2, n)).T  # (N, 2) X, Y
    pos_amp = np.asarray(COND_POS_AMPLITUDE)[scale] if cond else np.full(n, SIMPLE_POS_AMPLITUDE)
    pos_q = rng.integers(0, POS_SPEED_OFFSETS, size=(n, 2))

    cycle = np.asarray(ORIENTATION_CYCLE)[shape]  # (N,)
    if cond:
        # Official: roll the cycle by k ∈ {0..39}, so the start is k mod cycle.
        ori = rng.integers(0, 40, size=n) % cycle
        rotating = rng.random(n) >= P_NO_ROTATION
        ori_amp = np.where(rotating, ORIENTATION_AMPLITUDE, 0)
        ori_q = np.where(rotating, rng.integers(0, ORIENTATION_SPEED_OFFSETS, size=n), 0)
    else:
        ori = np.zeros(n, dtype=np.int64)
        ori_amp = np.zeros(n, dtype=np.int64)
        ori_q = np.zeros(n, dtype=np.int64)

    # state columns: (orientation, posX, posY)
    phase = np.column_stack([ori, pos_phase])  # (N, 3)
    period = np.column_stack([cycle, 2 * width, 2 * width])  # (N, 3)
    amp = np.column_stack([ori_amp, pos_amp, pos_amp])  # (N, 3)
    q = np.column_stack([ori_q, pos_q])  # (N, 3)
    q_period = np.maximum(4 * amp, 1)  # a fixed zero speed has period 1
    lo3, w3 = lo[:, None], width[:, None]
    step_choice = np.array([0, 0, 1, -1])

    def values(ph: np.ndarray) -> np.ndarray:  # (N, 3) phases → labels
        pos = lo3 + w3 - np.abs(w3 - ph[:, 1:])
        return np.column_stack([ph[:, 0], pos])

    dyn = np.empty((n, n_frames, 3), dtype=np.int64)
    speed = np.empty((n, n_frames - 1, 3), dtype=np.int64)
    dyn[:, 0] = values(phase)
    for t in range(1, n_frames):
        v = _triangle(q, amp)
        speed[:, t - 1] = v
        phase = (phase + v) % period
        q = (q + step_choice[rng.integers(0, 4, size=(n, 3))]) % q_period
        dyn[:, t] = values(phase)
    return dyn, speed


def generate_dynamics(shape: np.ndarray, scale: np.ndarray, variant: str, n_frames: int, rng) -> np.ndarray:
    """(N, T, 3) int64 [orientation, posX, posY] for sequences with the given shapes and scales."""
    return simulate_dynamics(shape, scale, variant, n_frames, rng)[0]


def _assemble(color, shape, scale, dyn: np.ndarray) -> np.ndarray:
    n, t = dyn.shape[:2]
    static = np.broadcast_to(np.stack([color, shape, scale], axis=1)[:, None, :], (n, t, 3))
    return np.concatenate([static, dyn], axis=2).astype(np.int8)


def generate_sequences(n: int, variant: str = "cond", n_frames: int = 16, rng=None) -> np.ndarray:
    """Draw n label sequences of the Moving dSprites process.

    Args:
        n: number of sequences.
        variant: "cond" (dependent dynamics) or "simple" (independent).
        n_frames: T, frames per sequence.
        rng: anything `np.random.default_rng` accepts (Generator, seed, SeedSequence).

    Returns:
        (n, T, 6) int8 labels [color, shape, scale, orientation, posX, posY].
    """
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _check_variant(variant)
    _check_n_frames(n_frames)
    rng = np.random.default_rng(rng)
    color = rng.integers(0, 6, size=n)
    shape = rng.integers(0, 3, size=n)
    scale = rng.integers(0, 6, size=n)
    return _assemble(color, shape, scale, generate_dynamics(shape, scale, variant, n_frames, rng))


def _check_table(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(FACTORS) or labels.shape[1] < 2:
        raise ValueError(f"labels must have shape (N, T >= 2, {len(FACTORS)}), got {labels.shape}")
    return labels


def same_dynamics_twins(labels: np.ndarray, variant: str = "cond", rng=None) -> np.ndarray:
    """The same trajectories with redrawn statics (the official *sameCondDynamic* test set).

    In cond only the colour is redrawn, because shape and scale drive the dynamics. In simple the
    colour, shape and scale are all redrawn. Each is drawn uniformly, so it can come out unchanged
    (the colour with probability 1/6), as in the official set.

    Args:
        labels: (N, T, 6) label sequences.
        variant: "cond" or "simple".
        rng: anything `np.random.default_rng` accepts.
    """
    labels = _check_table(labels)
    _check_variant(variant)
    rng = np.random.default_rng(rng)
    out = labels.astype(np.int8, copy=True)
    n = out.shape[0]
    out[:, :, 0] = rng.integers(0, 6, size=n)[:, None]
    if variant == "simple":
        out[:, :, 1] = rng.integers(0, 3, size=n)[:, None]
        out[:, :, 2] = rng.integers(0, 6, size=n)[:, None]
    return out


def same_statics_twins(labels: np.ndarray, variant: str = "cond", rng=None) -> np.ndarray:
    """The same colour, shape and scale with fresh dynamics (the official *sameStaticall* test set).

    Args:
        labels: (N, T, 6) label sequences.
        variant: "cond" or "simple".
        rng: anything `np.random.default_rng` accepts.
    """
    labels = _check_table(labels)
    _check_variant(variant)
    color, shape, scale = (labels[:, 0, i].astype(np.int64) for i in range(3))
    return _assemble(color, shape, scale, generate_dynamics(shape, scale, variant, labels.shape[1], rng))


# ---------------------------------------------------------------------------------------------
# Rendering (torch, on the labels' device, whole batch at once, no host syncs)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _palette(device: torch.device) -> torch.Tensor:
    """(6, 3) colours in [0, 1], cached per device so a batch does no host→device copy."""
    return torch.tensor(COLORS_RGB256, dtype=torch.float32, device=device) / 256.0


@functools.lru_cache(maxsize=16)
def _scales(device: torch.device) -> torch.Tensor:
    return torch.tensor(SCALES, dtype=torch.float32, device=device)


def _colorize(mask: torch.Tensor, color_idx: torch.Tensor) -> torch.Tensor:
    """mask: (N, H, W) in {0, 1}, color_idx: (N,) → (N, 3, H, W) float32."""
    return mask[:, None] * _palette(mask.device)[color_idx][:, :, None, None]


def _shape_masks(u: torch.Tensor, v: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inside test in sprite units (bounding disc of radius 1, v up). u, v: (N, P, P); shape: (N,)."""
    au, av = u.abs(), v.abs()
    half = 1.0 / math.sqrt(2.0)
    square = torch.maximum(au, av) <= half
    ellipse = u * u + 4.0 * v * v <= 1.0
    lobe = 0.5 * half  # lobe centres (±lobe, lobe): the midpoints of the diamond's upper edges
    heart = ((au + av) <= half) | ((au - lobe) ** 2 + (v - lobe) ** 2 <= 0.25)
    shape = shape[:, None, None]
    return torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))


def render_procedural(labels: torch.Tensor, frame_size: int = 64) -> torch.Tensor:
    """Draw the frames of `labels` with the procedural shapes, see the module docstring.

    Only a P×P window around each sprite is evaluated (P ≈ 0.3·H + 2, the largest sprite's
    bounding square), then scattered into the black frame: ~8× less work than the whole frame.

    Args:
        labels: (..., 6) integer labels [color, shape, scale, orientation, posX, posY].
        frame_size: H = W of the frames.

    Returns:
        (..., 3, H, W) float32 frames in [0, 1] on `labels.device`.
    """
    lead, size = labels.shape[:-1], frame_size
    lab = labels.reshape(-1, labels.shape[-1]).long()  # (N, 6)
    n, device = lab.shape[0], lab.device
    radius = _scales(device)[lab[:, 2]] * SPRITE_RADIUS  # (N,) in frame units
    theta = lab[:, 3].float() * ORIENTATION_STEP
    centre = (lab[:, 4:6].float() * (2.0 / (_N_POS - 1)) - 1.0) * POS_EXTENT  # (N, 2) x, y

    # Window: pixels whose centre can lie within SPRITE_RADIUS of the sprite centre.
    reach = SPRITE_RADIUS * size / 2  # largest radius in pixels
    p = min(int(2 * reach) + 2, size)
    centre_px = (centre + 1.0) * (size / 2) - 0.5  # continuous pixel index of the centre
    origin = torch.floor(centre_px - reach).long().clamp(0, size - p)  # (N, 2) first col, row
    pix = origin[:, :, None] + torch.arange(p, device=device)  # (N, 2, P) cols, rows
    coord = (pix.float() + 0.5) * (2.0 / size) - 1.0  # pixel centres in frame units

    r = radius[:, None]
    dx = ((coord[:, 0] - centre[:, :1]) / r)[:, None, :]  # (N, 1, P)
    dy = ((centre[:, 1:] - coord[:, 1]) / r)[:, :, None]  # (N, P, 1), up is +
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    # Sprite coordinates: rotate the pixel offsets by −θ, which turns the sprite by +θ.
    u = dx * cos + dy * sin  # (N, P, P)
    v = dy * cos - dx * sin
    patch = _shape_masks(u, v, lab[:, 1]).reshape(n, 1, p * p).float()  # (N, 1, P·P)
    patch = patch * _palette(device)[lab[:, 0]][:, :, None]  # (N, 3, P·P)

    flat = (pix[:, 1, :, None] * size + pix[:, 0, None, :]).reshape(n, 1, p * p).expand(n, 3, p * p)
    frames = torch.zeros(n, 3, size * size, device=device).scatter_(2, flat, patch)
    return frames.reshape(*lead, 3, size, size)


def dsprites_image_index(labels: torch.Tensor, sizes: tuple[int, ...] = DSPRITES_SIZES) -> torch.Tensor:
    """Row of the dSprites `imgs` array for each label: the C-order flat index of
    (shape, scale, orientation, posX, posY) in a grid of `sizes`.

    Args:
        labels: (..., 6) integer labels [color, shape, scale, orientation, posX, posY].
        sizes: number of values of (shape, scale, orientation, posX, posY) in the table.

    Returns:
        (...) int64 row indices.
    """
    index = torch.zeros(labels.shape[:-1], dtype=torch.long, device=labels.device)
    for col, size in zip(range(1, 6), sizes, strict=True):
        index = index * size + labels[..., col].long()
    return index


def render_from_masks(
    labels: torch.Tensor, packed: torch.Tensor, image_size: int, sizes: tuple[int, ...] = DSPRITES_SIZES
) -> torch.Tensor:
    """Frames from a bit-packed mask table (the dSprites `imgs` array), coloured per label.

    Args:
        labels: (..., 6) integer labels.
        packed: (n_images, image_size² / 8) uint8, each row `np.packbits` (big bit order) of a mask.
        image_size: H = W of the masks.
        sizes: the table's factor sizes, as in `dsprites_image_index`.

    Returns:
        (..., 3, H, W) float32 frames on `labels.device`.
    """
    lead = labels.shape[:-1]
    lab = labels.reshape(-1, labels.shape[-1]).long()
    rows = packed[dsprites_image_index(lab, sizes)]  # (N, H·W/8)
    shifts = torch.arange(7, -1, -1, device=rows.device, dtype=torch.uint8)  # MSB first
    bits = (rows[:, :, None] >> shifts) & 1  # (N, H·W/8, 8)
    mask = bits.reshape(-1, image_size, image_size).float()
    return _colorize(mask, lab[:, 0]).reshape(*lead, 3, image_size, image_size)


def load_dsprites_masks(
    path: str, expected_shape: tuple[int, int, int] | None = None, chunk: int = 16384
) -> torch.Tensor:
    """Read `imgs` from the dSprites npz and bit-pack it.

    The array is streamed from the zip in chunks. Decompressing it whole would take 3 GB of memory;
    the packed table is 377 MB.

    Args:
        path: the dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz file.
        expected_shape: shape `imgs` must have (default `NPZ_IMGS_SHAPE`, read at call time).
        chunk: images decoded at once.

    Returns:
        (n_images, H·W/8) uint8 CPU tensor.
    """
    expected_shape = tuple(expected_shape or NPZ_IMGS_SHAPE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.npz_path: no file at {path!r} (expected the dSprites npz)")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"data.npz_path={path!r} is not an .npz archive") from err
    with archive:
        names = archive.namelist()
        if "imgs.npy" not in names:
            found = [n.removesuffix(".npy") for n in names]
            raise ValueError(f"data.npz_path={path!r} has no 'imgs' array (found {found})")
        with archive.open("imgs.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            if tuple(shape) != expected_shape:
                raise ValueError(
                    f"data.npz_path={path!r}: 'imgs' has shape {tuple(shape)}, expected {expected_shape}"
                )
            if fortran_order or dtype.kind not in "biuf":
                raise ValueError(
                    f"data.npz_path={path!r}: 'imgs' must be a C-ordered numeric array, got {dtype}"
                )
            n, h, w = expected_shape
            if (h * w) % 8:
                raise ValueError(f"data.npz_path={path!r}: image size {h}x{w} is not a multiple of 8 pixels")
            packed = np.empty((n, h * w // 8), dtype=np.uint8)
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                buf = f.read(k * h * w * dtype.itemsize)
                if len(buf) != k * h * w * dtype.itemsize:
                    raise ValueError(f"data.npz_path={path!r}: 'imgs' is truncated at image {start}")
                imgs = np.frombuffer(buf, dtype=dtype).reshape(k, h * w)
                packed[start : start + k] = np.packbits(imgs != 0, axis=1)
    return torch.from_numpy(packed)


# ---------------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------------
_TWINS = ("same_dyn", "same_static")


class MovingDSpritesDataModule(IndexedDataModule):
    """Moving dSprites videos (Simon et al., ECCV 2024), generated from a seed and rendered on the fly.

    The train, val and test label tables use independent seeds derived from `seed`. Each test
    sequence also has two twins: `same_dyn` (the same trajectory with new statics, see
    `same_dynamics_twins`) and `same_static` (the same statics with fresh dynamics). A test batch
    therefore also carries `x_same_dyn`, `labels_same_dyn`, `x_same_static` and `labels_same_static`.

    Args:
        variant: "cond" (dynamics depend on scale and shape) or "simple" (independent factors).
        n_train: number of training sequences.
        n_val: number of held-out validation sequences.
        n_test: number of test sequences (each with its two twins).
        n_frames: frames per sequence (T >= 2).
        frame_size: frame height and width in pixels (>= 8; must be 64 with `npz_path`).
        batch_size: training batch size.
        eval_batch_size: val/test batch size (default: `batch_size`).
        seed: seed of all label tables (>= 0).
        npz_path: the official dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz; if set, frames use
            its masks instead of the procedural shapes.
        drop_last: drop the last incomplete training batch.
    """

    factors = FACTORS
    n_channels = 3

    def __init__(
        self,
        variant: str = "cond",
        n_train: int = 100_000,
        n_val: int = 2_000,
        n_test: int = 20_000,
        n_frames: int = 16,
        frame_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 42,
        npz_path: str | None = None,
        drop_last: bool = True,
    ):
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(
                f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size}"
            )
        super().__init__(batch_size=batch_size, drop_last=drop_last, eval_batch_size=eval_batch_size)
        _check_variant(variant, "data.variant")
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        _check_n_frames(n_frames, "data.n_frames")
        if not isinstance(frame_size, int) or frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"data.frame_size must be an integer >= {MIN_FRAME_SIZE}, got {frame_size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"data.seed must be a non-negative integer, got {seed!r}")
        if npz_path is not None:
            if not os.path.isfile(npz_path):
                raise FileNotFoundError(f"data.npz_path: no file at {npz_path!r} (expected the dSprites npz)")
            if frame_size != NPZ_IMGS_SHAPE[1]:
                raise ValueError(
                    f"data.frame_size must be {NPZ_IMGS_SHAPE[1]} with data.npz_path (its image size), "
                    f"got {frame_size}"
                )
        self.variant = variant
        self.n_frames = n_frames
        self.frame_size = frame_size
        self.seed = seed
        self.npz_path = npz_path
        self._n = {"train": n_train, "val": n_val, "test": n_test}
        self._tables: dict[str, torch.Tensor] = {}  # CPU int8 (N, T, 6), keyed "split" / "split/twin"
        self._on_device: dict[str, torch.Tensor] = {}  # the same, on the last device asked for
        self._masks: torch.Tensor | None = None  # packed npz masks (CPU)
        self._masks_on_device: torch.Tensor | None = None

    # -- tables ---------------------------------------------------------------------------------
    def _seeds(self, split: str) -> list[np.random.SeedSequence]:
        """Independent streams: one per split; the test stream spawns (main, same_dyn, same_static)."""
        child = np.random.SeedSequence(self.seed).spawn(len(self.splits))[self.splits.index(split)]
        return child.spawn(3) if split == "test" else [child]

    def _build(self, split: str) -> int:
        if split not in self._n:
            raise ValueError(f"split must be one of {tuple(self._n)}, got {split!r}")
        seeds = self._seeds(split)
        labels = generate_sequences(
            self._n[split], self.variant, self.n_frames, np.random.default_rng(seeds[0])
        )
        self._tables[split] = torch.from_numpy(labels)
        if split == "test":
            twins = (
                same_dynamics_twins(labels, self.variant, np.random.default_rng(seeds[1])),
                same_statics_twins(labels, self.variant, np.random.default_rng(seeds[2])),
            )
            for name, table in zip(_TWINS, twins, strict=True):
                self._tables[f"test/{name}"] = torch.from_numpy(table)
        return labels.shape[0]

    def labels(self, split: str, twin: str | None = None) -> torch.Tensor:
        """The CPU int8 label table (N, T, 6) of a split, or of a test twin ("same_dyn", "same_static")."""
        self.split_size(split)
        key = split if twin is None else f"{split}/{twin}"
        if key not in self._tables:
            raise ValueError(f"no table {key!r}; twins exist only for the test split: {_TWINS}")
        return self._tables[key]

    def _table_on(self, key: str, device: torch.device) -> torch.Tensor:
        cached = self._on_device.get(key)
        if cached is None or cached.device != device:
            cached = self._on_device[key] = self._tables[key].to(device)
        return cached

    # -- rendering ------------------------------------------------------------------------------
    def _mask_table(self, device: torch.device) -> torch.Tensor:
        if self._masks is None:
            self._masks = load_dsprites_masks(self.npz_path)
        if self._masks_on_device is None or self._masks_on_device.device != device:
            self._masks_on_device = self._masks.to(device)
        return self._masks_on_device

    def render(self, labels: torch.Tensor) -> torch.Tensor:
        """(..., 6) labels → (..., 3, H, W) frames on `labels.device` (npz masks if configured)."""
        if self.npz_path is None:
            return render_procedural(labels, self.frame_size)
        return render_from_masks(labels, self._mask_table(labels.device), self.frame_size)

    def materialize(self, split: str, index: torch.Tensor) -> dict:
        # index: (B,) on the target device; everything below stays there.
        self.split_size(split)
        keys = [split] + ([f"test/{t}" for t in _TWINS] if split == "test" else [])
        labels = [self._table_on(k, index.device)[index].long() for k in keys]  # each (B, T, 6)
        frames = self.render(torch.cat(labels)).chunk(len(keys))  # one render for the batch and twins
        out = {}
        for key, x, lab in zip(keys, frames, labels, strict=True):
            suffix = "" if "/" not in key else "_" + key.split("/")[1]
            out[f"x{suffix}"], out[f"labels{suffix}"] = x, lab
        return out
