"""Moving dSprites: the label process (both variants, twins, seeds), the renderers and the DataModule."""

from __future__ import annotations

import inspect
import math
import os
import re

import numpy as np
import pytest
import torch

from sdcd.data_modules import dsprites as ds
from sdcd.data_modules.dsprites import (
    FACTORS,
    MovingDSpritesDataModule,
    generate_sequences,
    render_procedural,
    same_dynamics_twins,
    same_statics_twins,
    simulate_dynamics,
)

os.environ.setdefault("WANDB_MODE", "disabled")

COLOR, SHAPE, SCALE, ORI, PX, PY = range(6)
CYCLE = {0: 10, 1: 20, 2: 39}
COND_AMP = {0: 5, 1: 5, 2: 4, 3: 4, 4: 3, 5: 3}


@pytest.fixture(scope="module")
def cond() -> np.ndarray:
    return generate_sequences(30_000, "cond", 16, np.random.default_rng(0)).astype(np.int64)


@pytest.fixture(scope="module")
def simple() -> np.ndarray:
    return generate_sequences(20_000, "simple", 16, np.random.default_rng(1)).astype(np.int64)


def _labels(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _mask(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) → (..., H, W) bool: pixels that are not black."""
    return frames.amax(dim=-3) > 0


# -- factors and label ranges ------------------------------------------------------------------
def test_factors_contract():
    assert [f.name for f in FACTORS] == ["color", "shape", "scale", "orientation", "posX", "posY"]
    assert [f.n_classes for f in FACTORS] == [6, 3, 6, 40, 32, 32]
    assert [f.static for f in FACTORS] == [True, True, True, False, False, False]
    assert [f.ordinal for f in FACTORS] == [False, False, True, True, True, True]
    dm = MovingDSpritesDataModule(n_train=4, n_val=4, n_test=4, frame_size=32, batch_size=2)
    assert [f.name for f in dm.static_factors] == ["color", "shape", "scale"]
    assert (dm.n_channels, dm.n_frames, dm.frame_size) == (3, 16, 32)


@pytest.mark.parametrize("variant", ["cond", "simple"])
def test_label_ranges_and_uniform_statics(variant):
    labels = generate_sequences(12_000, variant, 16, np.random.default_rng(5))
    assert labels.shape == (12_000, 16, 6) and labels.dtype == np.int8
    for i, f in enumerate(FACTORS):
        assert labels[..., i].min() >= 0 and labels[..., i].max() < f.n_classes, f.name
    statics = labels[:, :, :3]
    assert (statics == statics[:, :1]).all(), "colour/shape/scale must be constant over a sequence"
    for i in range(3):
        freq = np.bincount(labels[:, 0, i], minlength=FACTORS[i].n_classes) / len(labels)
        np.testing.assert_allclose(freq, 1 / FACTORS[i].n_classes, atol=0.02, err_msg=FACTORS[i].name)
    other = generate_sequences(5, variant, 3, 0)
    assert other.shape == (5, 3, 6)


# -- cond dependencies -----------------------------------------------------------------------
def test_cond_position_range_and_start_depend_on_scale(cond):
    for s in range(6):
        seqs = cond[cond[:, 0, SCALE] == s]
        lo, hi = 2 * s, 31 - 2 * s
        for axis in (PX, PY):
            pos = seqs[..., axis]
            assert pos.min() == lo and pos.max() == hi, (s, axis)
            # the start is uniform over the allowed positions, independently per axis
            freq = np.bincount(seqs[:, 0, axis] - lo, minlength=hi - lo + 1) / len(seqs)
            assert len(freq) == hi - lo + 1
            np.testing.assert_allclose(freq, 1 / (hi - lo + 1), atol=0.013, err_msg=f"scale {s}")
        corr = np.corrcoef(seqs[:, 0, PX], seqs[:, 0, PY])[0, 1]
        assert abs(corr) < 0.05


def test_cond_speed_amplitude_depends_on_scale(cond):
    step = np.abs(np.diff(cond[..., PX:], axis=1))  # (N, T-1, 2); a bounce only shortens a step
    for s, amp in COND_AMP.items():
        assert step[cond[:, 0, SCALE] == s].max() == amp, f"scale {s}"


def test_cond_orientation_cycle_depends_on_shape(cond):
    for shape, cycle in CYCLE.items():
        seqs = cond[cond[:, 0, SHAPE] == shape]
        ori = seqs[..., ORI]
        assert ori.min() == 0 and ori.max() == cycle - 1
        d = (np.diff(ori, axis=1) + cycle // 2) % cycle - cycle // 2  # cyclic step
        assert np.abs(d).max() == 3
        starts = np.bincount(seqs[:, 0, ORI], minlength=cycle) / len(seqs)
        assert len(starts) == cycle and starts.min() > 0.5 / cycle


def test_cond_rotation_happens_in_65_percent(cond):
    still = (cond[..., ORI] == cond[:, :1, ORI]).all(axis=1).mean()
    # 0.35 plus rotating sequences that never move (speed 0 for 15 steps: < 1e-5)
    assert abs(still - 0.35) < 0.015, still


@pytest.mark.parametrize("variant", ["cond", "simple"])
def test_speed_rule(variant):
    rng = np.random.default_rng(3)
    n = 20_000
    shape, scale = rng.integers(0, 3, n), rng.integers(0, 6, n)
    dyn, speed = simulate_dynamics(shape, scale, variant, 16, rng)
    amp_pos = np.array([COND_AMP[s] for s in range(6)])[scale] if variant == "cond" else np.full(n, 4)
    assert (np.abs(speed[..., 1:]) <= amp_pos[:, None, None]).all()
    assert (np.abs(speed[..., 0]) <= (3 if variant == "cond" else 0)).all()
    dv = np.diff(speed, axis=1)
    assert np.abs(dv).max() == 1, "the speed changes by at most 1 per step"
    moving = (np.abs(speed) > 0).any(axis=1)  # (N, 3): factors with a non-zero speed wave
    unchanged = (dv == 0).transpose(0, 2, 1)[moving]  # (M, T-2)
    assert abs(unchanged.mean() - 0.5) < 0.01, "speed kept with p = 1/2"

    # Each move uses the speed *before* its update: exact for orientation (cyclic), and for
    # positions whenever the step cannot reach a wall.
    cycle = np.array([CYCLE[s] for s in range(3)])[shape][:, None]
    np.testing.assert_array_equal(np.diff(dyn[..., 0], axis=1) % cycle, speed[..., 0] % cycle)
    lo = (2 * scale if variant == "cond" else np.zeros(n, int))[:, None]
    hi = 31 - lo
    for k in (1, 2):
        pos, v = dyn[:, :-1, k], np.abs(speed[..., k])
        step = np.abs(np.diff(dyn[..., k], axis=1))
        assert (step <= v).all()
        clear = (pos - v >= lo) & (pos + v <= hi)
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(step[clear], v[clear])


def test_simple_variant_is_independent(simple):
    assert (simple[..., ORI] == 0).all(), "orientation is fixed in simple"
    step = np.abs(np.diff(simple[..., PX:], axis=1))
    for s in range(6):
        seqs = simple[simple[:, 0, SCALE] == s]
        assert seqs[..., PX:].min() == 0 and seqs[..., PX:].max() == 31, f"full range at scale {s}"
        assert step[simple[:, 0, SCALE] == s].max() == 4
    freq = np.bincount(simple[:, 0, PX], minlength=32) / len(simple)
    np.testing.assert_allclose(freq, 1 / 32, atol=0.008)
    # the mean step size does not depend on scale (it does in cond)
    mean_step = [step[simple[:, 0, SCALE] == s].mean() for s in range(6)]
    assert max(mean_step) - min(mean_step) < 0.1


def test_cond_mean_step_shrinks_with_scale(cond):
    step = np.abs(np.diff(cond[..., PX:], axis=1))
    mean_step = [step[cond[:, 0, SCALE] == s].mean() for s in range(6)]
    assert mean_step[0] > mean_step[2] > mean_step[4]


# -- twins -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["cond", "simple"])
def test_same_dynamics_twin(variant):
    base = generate_sequences(6_000, variant, 16, 11)
    twin = same_dynamics_twins(base, variant, 12)
    assert twin.shape == base.shape and twin.dtype == np.int8
    np.testing.assert_array_equal(twin[..., 3:], base[..., 3:])
    assert (twin[:, :, :3] == twin[:, :1, :3]).all(), "twin statics constant in time"
    redrawn = [COLOR] if variant == "cond" else [COLOR, SHAPE, SCALE]
    for i in range(3):
        changed = (twin[:, 0, i] != base[:, 0, i]).mean()
        if i in redrawn:  # redrawn uniformly: unchanged with probability 1/k
            k = FACTORS[i].n_classes
            assert abs(changed - (k - 1) / k) < 0.03, FACTORS[i].name
        else:
            assert changed == 0, FACTORS[i].name


@pytest.mark.parametrize("variant", ["cond", "simple"])
def test_same_statics_twin(variant):
    base = generate_sequences(6_000, variant, 16, 21)
    twin = same_statics_twins(base, variant, 22)
    np.testing.assert_array_equal(twin[..., :3], base[..., :3])
    same_traj = (twin[..., 3:] == base[..., 3:]).all(axis=(1, 2)).mean()
    assert same_traj < 0.01, "fresh dynamics"
    # the fresh dynamics obey the variant's rules for these statics
    scale, shape = twin[:, 0, SCALE].astype(int), twin[:, 0, SHAPE].astype(int)
    lo = 2 * scale if variant == "cond" else np.zeros_like(scale)
    pos = twin[..., PX:].astype(int)
    assert (pos >= lo[:, None, None]).all() and (pos <= 31 - lo[:, None, None]).all()
    cycle = np.array([10, 20, 39])[shape]
    assert (twin[..., ORI] < cycle[:, None]).all()
    if variant == "simple":
        assert (twin[..., ORI] == 0).all()


# -- seeds ----------------------------------------------------------------------------------------
def test_generation_is_deterministic_by_seed():
    a = generate_sequences(500, "cond", 16, 7)
    np.testing.assert_array_equal(a, generate_sequences(500, "cond", 16, np.random.default_rng(7)))
    assert (a != generate_sequences(500, "cond", 16, 8)).any()


def _tables(dm: MovingDSpritesDataModule) -> dict[str, torch.Tensor]:
    dm.setup()
    out = {s: dm.labels(s) for s in dm.splits}
    out.update({f"test/{t}": dm.labels("test", t) for t in ("same_dyn", "same_static")})
    return out


def test_datamodule_tables_deterministic_by_seed():
    kw = dict(n_train=64, n_val=16, n_test=32, frame_size=32, batch_size=8)
    a, b = _tables(MovingDSpritesDataModule(seed=3, **kw)), _tables(MovingDSpritesDataModule(seed=3, **kw))
    c = _tables(MovingDSpritesDataModule(seed=4, **kw))
    for key in a:
        assert a[key].dtype == torch.int8
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], c[key]), key
    assert [len(a[s]) for s in ("train", "val", "test")] == [64, 16, 32]
    assert not torch.equal(a["train"][:16], a["val"]), "splits use independent streams"
    # a split's table does not depend on the other splits' sizes
    d = _tables(MovingDSpritesDataModule(seed=3, **{**kw, "n_val": 8, "n_test": 8}))
    assert torch.equal(a["train"], d["train"])


# -- procedural renderer -------------------------------------------------------------------------
def _centred(shape: int, scale: int, ori: int = 0, color: int = 0) -> list[int]:
    return [color, shape, scale, ori, 16, 16]


def test_area_grows_with_scale_and_matches_geometry():
    size = 64
    rows = [_centred(sh, sc) for sh in range(3) for sc in range(6)]
    area = _mask(render_procedural(_labels(*rows), size)).sum(dim=(-1, -2)).reshape(3, 6)
    assert (area.diff(dim=1) > 0).all(), area

    # Averaged over sub-pixel offsets (12×12 positions), the pixel area is the shape's true area
    # k·(radius·scale·H/2)², with k = 2 (square), π/2 (ellipse), 1 + π/4 (heart).
    rows = [
        [0, sh, sc, 0, x, y]
        for sh in range(3)
        for sc in range(6)
        for x in range(10, 22)
        for y in range(10, 22)
    ]
    mean_area = (
        _mask(render_procedural(_labels(*rows), size)).sum(dim=(-1, -2)).reshape(3, 6, -1).double().mean(-1)
    )
    k = torch.tensor([2.0, math.pi / 2, 1 + math.pi / 4], dtype=torch.double)[:, None]
    r_px = ds.SPRITE_RADIUS * torch.tensor(ds.SCALES, dtype=torch.double) * size / 2
    ratio = mean_area / (k * r_px**2)
    assert ((ratio - 1).abs() < 0.04).all(), ratio
    # so the three shapes differ in area at every scale: square > heart > ellipse
    assert (mean_area[0] > 1.05 * mean_area[2]).all() and (mean_area[2] > 1.05 * mean_area[1]).all()


@pytest.mark.parametrize("size", [64, 32])
def test_largest_sprite_at_extreme_positions_stays_inside(size):
    rows = [
        [c, sh, 5, o, x, y]
        for c, sh in enumerate(range(3))
        for o in range(0, 40, 3)
        for x in (0, 31)
        for y in (0, 31)
    ]
    mask = _mask(render_procedural(_labels(*rows), size))
    assert mask.sum(dim=(-1, -2)).min() > 0, "sprites are drawn"
    border = torch.cat([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], dim=1)
    assert not border.any(), "no sprite pixel on the frame border"


def test_pixels_have_the_label_colour():
    rows = [[c, sh, sc, 7 * c, 3 + 5 * c, 28 - 4 * c] for c in range(6) for sh in range(3) for sc in (0, 5)]
    frames = render_procedural(_labels(*rows), 64)
    palette = torch.tensor(ds.COLORS_RGB256, dtype=torch.float32) / 256
    assert frames.dtype == torch.float32 and frames.min() >= 0 and frames.max() <= 1
    for row, frame in zip(rows, frames, strict=True):
        m = _mask(frame)
        assert m.any()
        pixels = frame.permute(1, 2, 0)[m]  # (n_on, 3)
        assert torch.equal(pixels, palette[row[0]].expand_as(pixels))
        assert (frame.permute(1, 2, 0)[~m] == 0).all()


def test_orientation_rotates_the_sprite():
    frames = render_procedural(
        _labels(*[_centred(0, 5, o) for o in (0, 4)], _centred(1, 5, 0), _centred(1, 5, 10)), 64
    )
    m = _mask(frames)
    assert (m[0] ^ m[1]).sum() > 20, "rotating the square changes its mask"
    assert abs(int(m[0].sum()) - int(m[1].sum())) < 0.1 * int(m[0].sum()), "rotation keeps the area"

    def extent(mask, dim):  # number of occupied rows (dim=1) or columns (dim=0)
        return int(mask.any(dim=dim).sum())

    # ellipse: long axis horizontal at 0, near vertical at 10 steps (≈ 92°)
    assert extent(m[2], 0) > 1.6 * extent(m[2], 1)
    assert extent(m[3], 1) > 1.6 * extent(m[3], 0)


def test_position_axes_and_heart_is_upright():
    frames = render_procedural(
        _labels([0, 2, 3, 0, 4, 16], [0, 2, 3, 0, 27, 16], [0, 2, 3, 0, 16, 4], [0, 2, 3, 0, 16, 27]), 64
    )
    m = _mask(frames).float()
    grid = torch.arange(64.0)
    col = (m.sum(1) * grid).sum(1) / m.sum((1, 2))
    row = (m.sum(2) * grid).sum(1) / m.sum((1, 2))
    assert col[1] > col[0] + 30 and abs(row[1] - row[0]) < 0.5, "posX moves along the columns"
    assert row[3] > row[2] + 30 and abs(col[3] - col[2]) < 0.5, "posY moves down the rows"
    # the heart's mass sits above its centre (pixel row of posY = 16): the lobes are on top
    centre_row = ((16 / 31 * 2 - 1) * ds.POS_EXTENT + 1) * 32 - 0.5
    assert row[0] < centre_row - 1, (row[0], centre_row)


def test_window_rendering_matches_full_frame():
    """The windowed renderer equals a brute-force evaluation over every pixel."""
    labels = torch.from_numpy(generate_sequences(40, "simple", 4, 9)).long().reshape(-1, 6)
    labels[:, SCALE] = 5  # largest sprites, simple: up to the extreme positions
    labels[:, ORI] = torch.arange(len(labels)) % 40
    for size in (64, 32, 8):
        fast = _mask(render_procedural(labels, size))
        grid = (torch.arange(size) + 0.5) * 2 / size - 1
        r = (torch.tensor(ds.SCALES)[labels[:, SCALE]] * ds.SPRITE_RADIUS)[:, None, None]
        cx = ((labels[:, PX] * 2 / 31 - 1) * ds.POS_EXTENT)[:, None, None]
        cy = ((labels[:, PY] * 2 / 31 - 1) * ds.POS_EXTENT)[:, None, None]
        th = labels[:, ORI].double()[:, None, None] * 2 * math.pi / 39
        dx, dy = (grid[None, None, :] - cx) / r, (cy - grid[None, :, None]) / r
        u = dx * torch.cos(th) + dy * torch.sin(th)
        v = dy * torch.cos(th) - dx * torch.sin(th)
        full = ds._shape_masks(u.float(), v.float(), labels[:, SHAPE])
        mismatch = (fast != full).float().mean()
        assert mismatch < 1e-3, (size, mismatch)  # float rounding on exact boundaries only


def test_render_keeps_leading_dims_and_device():
    labels = torch.from_numpy(generate_sequences(3, "cond", 5, 0)).to(torch.int8)
    frames = render_procedural(labels, 32)
    assert frames.shape == (3, 5, 3, 32, 32) and frames.device == labels.device
    assert torch.equal(frames[1, 2], render_procedural(labels[1, 2], 32))


# -- npz masks -----------------------------------------------------------------------------------
def test_image_index_matches_dsprites_layout():
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, f.n_classes, 1000) for f in FACTORS], axis=1)
    expected = np.ravel_multi_index(tuple(labels[:, 1:].T), ds.DSPRITES_SIZES)
    got = ds.dsprites_image_index(torch.from_numpy(labels))
    np.testing.assert_array_equal(got.numpy(), expected)
    last = ds.dsprites_image_index(_labels([0, 2, 5, 39, 31, 31]))
    assert last.item() == 737_279 == 2 * 6 * 40 * 32 * 32 + 5 * 40 * 32 * 32 + 39 * 32 * 32 + 31 * 32 + 31


def test_render_from_masks_on_a_small_table():
    sizes, size = (3, 2, 4, 4, 4), 8
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 2, size=(int(np.prod(sizes)), size, size), dtype=np.uint8)
    packed = torch.from_numpy(np.packbits(imgs.reshape(len(imgs), -1), axis=1))
    labels = np.stack([rng.integers(0, n, (5, 7)) for n in (6, *sizes)], axis=-1)  # (5, 7, 6)
    frames = ds.render_from_masks(torch.from_numpy(labels), packed, size, sizes)
    assert frames.shape == (5, 7, 3, size, size)
    rows = np.ravel_multi_index(tuple(np.moveaxis(labels[..., 1:], -1, 0)), sizes)
    palette = np.array(ds.COLORS_RGB256, dtype=np.float32) / 256
    expected = imgs[rows][:, :, None] * palette[labels[..., 0]][..., None, None]
    np.testing.assert_array_equal(frames.numpy(), expected)


def test_load_masks_streams_and_validates(tmp_path):
    imgs = np.random.default_rng(2).integers(0, 2, size=(20, 8, 8), dtype=np.uint8)
    path = tmp_path / "small.npz"
    np.savez_compressed(path, imgs=imgs, latents_classes=np.zeros((20, 6)))
    packed = ds.load_dsprites_masks(str(path), expected_shape=(20, 8, 8), chunk=7)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(imgs.reshape(20, -1), axis=1))

    with pytest.raises(ValueError, match=re.escape("(737280, 64, 64)")):
        ds.load_dsprites_masks(str(path))
    with pytest.raises(FileNotFoundError, match="npz_path"):
        ds.load_dsprites_masks(str(tmp_path / "missing.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        ds.load_dsprites_masks(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "other.npz", images=imgs)
    with pytest.raises(ValueError, match="no 'imgs'"):
        ds.load_dsprites_masks(str(tmp_path / "other.npz"))


def test_datamodule_uses_npz_masks(tmp_path, monkeypatch):
    """End to end with a table of the official layout (737,280 images), shrunk to 8×8 pixels."""
    shape = (737_280, 8, 8)
    monkeypatch.setattr(ds, "NPZ_IMGS_SHAPE", shape)
    imgs = np.random.default_rng(3).integers(0, 2, size=shape, dtype=np.uint8)
    path = tmp_path / "dsprites.npz"
    np.savez(path, imgs=imgs)
    dm = MovingDSpritesDataModule(
        n_train=8, n_val=4, n_test=4, frame_size=8, batch_size=4, npz_path=str(path)
    )
    batch = dm.batch("test", [0, 3])
    labels = batch["labels"].numpy()
    rows = np.ravel_multi_index(tuple(np.moveaxis(labels[..., 1:], -1, 0)), ds.DSPRITES_SIZES)
    palette = np.array(ds.COLORS_RGB256, dtype=np.float32) / 256
    expected = imgs[rows][:, :, None] * palette[labels[..., 0]][..., None, None]
    np.testing.assert_array_equal(batch["x"].numpy(), expected)
    assert batch["x_same_dyn"].shape == batch["x"].shape


# -- DataModule ----------------------------------------------------------------------------------
def test_batches_through_dataloader_follow_the_contract():
    dm = MovingDSpritesDataModule(
        variant="cond", n_train=40, n_val=12, n_test=10, frame_size=32, batch_size=8, eval_batch_size=4
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 5
    raw = next(iter(loader))
    batch = dm.on_after_batch_transfer(raw, 0)
    x, labels = batch["x"], batch["labels"]
    assert x.shape == (8, 16, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and _mask(x).any(dim=(-1, -2)).all()
    assert labels.shape == (8, 16, 6) and labels.dtype == torch.int64
    assert torch.equal(labels, dm.labels("train")[batch["index"]].long())
    assert batch["split"] == "train" and "x_same_dyn" not in batch
    assert torch.equal(x, dm.render(labels))

    val = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert [len(b["index"]) for b in val] == [4, 4, 4] and "labels_same_static" not in val[0]

    dm.setup("test")
    test = [dm.on_after_batch_transfer(b, 0) for b in dm.test_dataloader()]
    assert [len(b["index"]) for b in test] == [4, 4, 2]
    b = test[0]
    for key in ("x_same_dyn", "x_same_static"):
        assert b[key].shape == (4, 16, 3, 32, 32) and b[key].dtype == torch.float32
    for key in ("labels_same_dyn", "labels_same_static"):
        assert b[key].shape == (4, 16, 6) and b[key].dtype == torch.int64
    assert torch.equal(b["labels_same_dyn"][..., 3:], b["labels"][..., 3:])
    assert torch.equal(b["labels_same_static"][..., :3], b["labels"][..., :3])
    assert torch.equal(b["x_same_static"], dm.render(b["labels_same_static"]))


def test_lightning_cli_yaml(tmp_path):
    from lightning import LightningDataModule
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.demos.boring_classes import BoringModel

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data:\n"
        "  class_path: sdcd.data_modules.dsprites.MovingDSpritesDataModule\n"
        "  init_args: {variant: simple, n_train: 32, n_val: 8, n_test: 8, frame_size: 32, batch_size: 4}\n"
        f"trainer: {{logger: false, enable_checkpointing: false, default_root_dir: {tmp_path}}}\n"
    )
    cli = LightningCLI(
        BoringModel, LightningDataModule, subclass_mode_data=True, run=False, args=["--config", str(cfg)]
    )
    dm = cli.datamodule
    assert isinstance(dm, MovingDSpritesDataModule)
    assert (dm.variant, dm.frame_size, dm.batch_size, dm.eval_batch_size) == ("simple", 32, 4, 4)


def test_help_documents_every_argument():
    import docstring_parser
    from jsonargparse import ArgumentParser

    params = set(inspect.signature(MovingDSpritesDataModule.__init__).parameters) - {"self"}
    docs = {
        p.arg_name: p.description for p in docstring_parser.parse(MovingDSpritesDataModule.__doc__).params
    }
    assert set(docs) == params
    parser = ArgumentParser()
    parser.add_class_arguments(MovingDSpritesDataModule, "data")
    text = " ".join(parser.format_help().split())
    for name, description in docs.items():
        assert f"--data.{name}" in text
        assert " ".join(description.split())[:40] in text, name


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, arg",
    [
        ({"variant": "causal"}, ValueError, "data.variant"),
        ({"n_train": 0}, ValueError, "data.n_train"),
        ({"n_val": -1}, ValueError, "data.n_val"),
        ({"n_test": 0}, ValueError, "data.n_test"),
        ({"n_frames": 1}, ValueError, "data.n_frames"),
        ({"frame_size": 0}, ValueError, "data.frame_size"),
        ({"frame_size": 4}, ValueError, "data.frame_size"),
        ({"batch_size": 0}, ValueError, "data.batch_size"),
        ({"eval_batch_size": 0}, ValueError, "data.eval_batch_size"),
        ({"seed": -1}, ValueError, "data.seed"),
        ({"npz_path": "/no/such/dsprites.npz"}, FileNotFoundError, "data.npz_path"),
    ],
)
def test_bad_datamodule_arguments(kwargs, error, arg):
    with pytest.raises(error, match=re.escape(arg)):
        MovingDSpritesDataModule(**kwargs)


def test_npz_requires_64_pixel_frames(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, imgs=np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="data.frame_size must be 64"):
        MovingDSpritesDataModule(npz_path=str(path), frame_size=32)


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="variant"):
        generate_sequences(4, "causal")
    with pytest.raises(ValueError, match="n must be"):
        generate_sequences(0)
    with pytest.raises(ValueError, match="n_frames"):
        generate_sequences(4, "cond", 1)
    with pytest.raises(ValueError, match="labels must have shape"):
        same_dynamics_twins(np.zeros((4, 16)), "cond")
    with pytest.raises(ValueError, match="twins exist only for the test split"):
        MovingDSpritesDataModule(n_train=4, n_val=4, n_test=4).labels("train", "same_dyn")


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_rendering_matches_cpu_without_host_syncs():
    dm = MovingDSpritesDataModule(n_train=64, n_val=8, n_test=64, frame_size=64, batch_size=32)
    index = torch.arange(0, 64, 2, device="cuda")
    dm.materialize("test", index)  # warm-up: tables and constants move to the GPU once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = dm.materialize("test", index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = dm.materialize("test", index.cpu())
    for key in ("x", "x_same_dyn", "x_same_static"):
        assert gpu[key].device.type == "cuda"
        mismatch = (gpu[key].cpu() != cpu[key]).any(dim=-3).float().mean()
        assert mismatch < 1e-4, (key, mismatch)  # only pixel centres exactly on a boundary
