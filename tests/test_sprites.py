"""The LPC Sprites DataModule: frames, published split, labels, npy layout, sheet checks, cache, batches."""

import functools
import hashlib
import shutil
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_files import SHEETS, copy_sheets, write_valid_npy
from PIL import Image

from sdcd.data_modules import sprites_io as S
from sdcd.data_modules.sprites import SpritesDataModule

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not SHEETS.is_dir(), reason=f"LPC sprite sheets not found at {SHEETS}")

# The generator's layout, written out independently of the module: sheet row per (action, direction)
# and sheet column per frame.
ROW = {("walk", "left"): 9, ("walk", "front"): 10, ("walk", "right"): 11,
       ("spellcast", "left"): 1, ("spellcast", "front"): 2, ("spellcast", "right"): 3,
       ("slash", "left"): 13, ("slash", "front"): 14, ("slash", "right"): 15}  # fmt: skip
COLS = {
    "walk": [8, 1, 2, 3, 4, 5, 6, 7],
    "spellcast": [0, 1, 2, 3, 4, 5, 4, 6],
    "slash": [0, 1, 2, 3, 4, 5, 4, 0],
}
MOTIONS = [(a, d) for a in ("walk", "spellcast", "slash") for d in ("front", "left", "right")]  # label 3a + d


@functools.lru_cache(maxsize=16)
def reference_sheet(char: int) -> np.ndarray:
    """The composited 1344×832 RGB sheet of one character, the way the original script makes it (Pillow)."""
    body, bottom, top, hair = char // 216, char // 36 % 6, char // 6 % 6, char % 6
    sheet = Image.new("RGBA", (832, 1344), "black")
    for rel in (
        f"body/{body}.png",
        f"bottomwear/{bottom}.png",
        f"topwear/{top}.png",
        f"hair/{hair}.png",
        "shoes/1.png",
    ):
        sheet = Image.alpha_composite(sheet, Image.open(SHEETS / rel).convert("RGBA"))
    return np.asarray(sheet)[..., :3]


def tile(sheet: np.ndarray, row: int, col: int) -> np.ndarray:
    """(3, 64, 64) tile of a (1344, 832, 3) sheet."""
    return sheet[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64].transpose(2, 0, 1)


@pytest.fixture(scope="module")
def layers() -> S.Layers:
    return S.Layers(S.ensure_sheets(SHEETS))


def all_rows(dm: SpritesDataModule, split: str) -> dict:
    return dm.batch(split, torch.arange(dm.split_size(split)))


# -- compositing and frame layout ------------------------------------------------------------------------
def test_compositing_equals_pillow_alpha_composite_bit_for_bit():
    # every (source value, alpha) pair, 8 times, each time over 3 random canvas values (one per channel)
    s, a = (v.ravel().astype(np.uint8) for v in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    s, a = np.tile(s, 8), np.tile(a, 8)
    d = np.random.default_rng(0).integers(0, 256, (len(s), 3), dtype=np.uint8)
    d[:3] = [[0, 0, 0], [255, 255, 255], [1, 254, 128]]
    src = np.stack([s, s, s, a], -1).reshape(-1, 1024, 4)
    dst = np.concatenate([d, np.full_like(d[:, :1], 255)], -1).reshape(-1, 1024, 4)
    want = np.asarray(Image.alpha_composite(Image.fromarray(dst, "RGBA"), Image.fromarray(src, "RGBA")))
    got = S.over(dst[..., :3], src[..., :3], src[..., 3:])
    np.testing.assert_array_equal(got, want[..., :3])


@pytest.mark.parametrize("char", [0, 777, 1295])
def test_frames_follow_the_published_sheet_layout(layers, char):
    x = S.render_sequences(layers, np.full(9, char), np.arange(9))  # (9 motions, 8, 3, 64, 64)
    sheet = reference_sheet(char)
    for m, (action, direction) in enumerate(MOTIONS):
        for t, col in enumerate(COLS[action]):
            np.testing.assert_array_equal(
                x[m, t], tile(sheet, ROW[action, direction], col), err_msg=f"{m=} {t=}"
            )
    walk_left, spell, slash = MOTIONS.index(("walk", "left")), MOTIONS.index(("spellcast", "front")), 6
    np.testing.assert_array_equal(x[walk_left, 0], tile(sheet, 9, 8))
    np.testing.assert_array_equal(x[spell, 6], x[spell, 4])
    np.testing.assert_array_equal(x[slash, 7], x[slash, 0])
    assert x[:, :, :, 0, 0].max() == 0  # opaque black background in the tile corners
    assert all(not np.array_equal(x[i], x[j]) for i in range(9) for j in range(i))  # 9 distinct motions


def test_each_layer_changes_the_frames(layers):
    # characters differing in one digit (body, bottomwear, topwear, hair) render differently
    base = 3 * 216 + 2 * 36 + 4 * 6 + 1
    chars = np.array([base, base - 216, base - 36, base - 6, base - 1])
    x = S.render_sequences(layers, chars, np.zeros(5, dtype=np.int64))
    assert all(not np.array_equal(x[0], x[k]) for k in range(1, 5))


# -- the published split ---------------------------------------------------------------------------
def original_order():
    """The original scripts' order with NumPy's global legacy seeding (state restored afterwards)."""
    state = np.random.get_state()
    try:
        np.random.seed(423)
        chars = np.random.permutation(list(range(1296)))
        blocks = {"train": [], "test": []}
        for m in range(9):  # action outer, direction inner
            blocks["train"] += [(c, m) for c in chars[:1000]]
            blocks["test"] += [(c, m) for c in chars[1000:]]
        np.random.seed(0)
        out = {}
        for split in ("train", "test"):
            rows = np.array(blocks[split])
            out[split] = rows[np.random.permutation(len(rows))]
        return chars, out
    finally:
        np.random.set_state(state)


def test_split_reproduces_the_published_one():
    chars, rows = original_order()
    split = S.character_split()
    assert split["train"][:5].tolist() == [1116, 1135, 17, 469, 1293] == chars[:5].tolist()
    assert split["test"][:3].tolist() == [884, 1285, 252] == chars[1000:1003].tolist()
    assert len(split["train"]) == 1000 and len(split["test"]) == 296
    assert not set(split["train"]) & set(split["test"])
    order = S.published_order()
    for name, n in (("train", 9000), ("test", 2664)):
        char, motion = order[name]
        assert len(char) == n
        np.testing.assert_array_equal(np.stack([char, motion], 1), rows[name])
        assert np.bincount(motion).tolist() == [n // 9] * 9


@pytest.mark.parametrize("val", ["holdout", "test"])
def test_split_plan_never_trains_on_test_characters(val):
    dm = SpritesDataModule(val=val, val_characters=40)
    plan = {s: set(chars.tolist()) for s, (_, chars) in dm.plan.items()}
    assert not plan["train"] & plan["test"] and not plan["train"] & plan["val"]
    assert len(plan["val"]) == 40 and len(plan["test"]) == 296
    assert len(plan["train"]) == (960 if val == "holdout" else 1000)
    assert plan["train"] | plan["val"] | plan["test"] <= set(range(1296))


# -- labels and batches ---------------------------------------------------------------------------
def test_labels_match_the_frames(small):
    for split in ("train", "val", "test"):
        b = all_rows(small, split)
        labels = b["labels"].numpy()  # (N, 8, 5)
        assert (labels == labels[:, :1]).all()  # every label is constant over a sequence here
        np.testing.assert_array_equal(S.character_ids(labels[:, 0, :4]), small.split_characters(split))
        for i in range(0, len(labels), 5):
            char, motion = int(S.character_ids(labels[i, 0, :4])), int(labels[i, 0, 4])
            (action, direction), sheet = MOTIONS[motion], reference_sheet(char)
            want = np.stack([tile(sheet, ROW[action, direction], c) for c in COLS[action]])
            np.testing.assert_array_equal((b["x"][i] * 256).round().to(torch.uint8).numpy(), want)


def test_small_option_keeps_the_published_order(small):
    plan = small.plan
    char, motion = S.published_order()["train"]
    mask = np.isin(char, plan["train"][1])
    np.testing.assert_array_equal(small.split_characters("train"), char[mask])
    np.testing.assert_array_equal(all_rows(small, "train")["labels"][:, 0, 4].numpy(), motion[mask])
    assert {s: small.split_size(s) for s in small.splits} == {"train": 27, "val": 18, "test": 27}
    held_out = S.character_split()["train"][-2:]  # val = the last two training characters
    assert set(small.split_characters("val")) == set(held_out)


def test_batches_through_the_dataloader_meet_the_contract(small):
    assert [f.name for f in small.factors] == ["skin", "pants", "top", "hair", "action"]
    assert [f.n_classes for f in small.factors] == [6, 6, 6, 6, 9]
    assert [f.static for f in small.factors] == [True] * 4 + [False]
    assert (small.n_channels, small.n_frames, small.frame_size) == (3, 8, 64)
    loaders = {
        "train": small.train_dataloader(),
        "val": small.val_dataloader(),
        "test": small.test_dataloader(),
    }
    assert len(loaders["train"]) == 27 // 8  # drop_last
    for split, loader in loaders.items():
        raw = next(iter(loader))
        batch = small.on_after_batch_transfer(raw, 0)
        x, labels = batch["x"], batch["labels"]
        assert x.shape == (8, 8, 3, 64, 64) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() < 1
        assert torch.equal(x * 256, (x * 256).round())  # uint8 / 256 exactly
        assert labels.shape == (8, 8, 5) and labels.dtype == torch.int64
        n_classes = torch.tensor([f.n_classes for f in small.factors])
        assert (labels >= 0).all() and (labels < n_classes).all()
        assert batch["split"] == split and torch.equal(batch["index"], raw["index"])
        assert torch.equal(x, small.batch(split, raw["index"])["x"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batches_are_materialised_on_the_gpu(small):
    index = torch.arange(8)
    cpu, gpu = small.batch("train", index), small.batch("train", index, device="cuda")
    assert gpu["x"].is_cuda and gpu["labels"].is_cuda
    assert torch.equal(gpu["x"].cpu(), cpu["x"]) and torch.equal(gpu["labels"].cpu(), cpu["labels"])


# -- the peers' npy layout ----------------------------------------------------------------------------
def test_npy_layout_round_trip(small, tmp_path):
    small.export_npy(tmp_path)
    n = {"train": 45, "test": 27}  # the small train array holds train + val characters
    for split in ("train", "test"):
        X = np.load(tmp_path / f"sprites_X_{split}.npy")
        A = np.load(tmp_path / f"sprites_A_{split}.npy")
        D = np.load(tmp_path / f"sprites_D_{split}.npy")
        assert X.shape == (n[split], 8, 64, 64, 3) and X.dtype == np.float32 and X.max() < 1
        assert A.shape == (n[split], 8, 4, 6) and D.shape == (n[split], 8, 9)
        assert (A.sum(-1) == 1).all() and (D.sum(-1) == 1).all()
    loaded = SpritesDataModule(npy_dir=str(tmp_path), n_characters=3, val_characters=2)
    loaded.setup()
    for split in ("train", "val", "test"):
        a, b = all_rows(small, split), all_rows(loaded, split)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["labels"], b["labels"]), split


def npy_error(folder: Path) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        SpritesDataModule(npy_dir=str(folder), n_characters=3, val_characters=2).setup()
    return str(err.value)


def test_npy_layout_errors_name_the_file(small, tmp_path):
    bad = write_valid_npy(small, tmp_path / "shape")
    np.save(bad / "sprites_X_test.npy", np.zeros((27, 8, 3, 64, 64), np.float32))  # channels-first
    msg = npy_error(bad)
    assert "sprites_X_test.npy" in msg and "(N, 8, 64, 64, 3)" in msg

    bad = write_valid_npy(small, tmp_path / "missing")
    (bad / "sprites_D_train.npy").unlink()
    assert "sprites_D_train.npy: missing" in npy_error(bad)

    bad = write_valid_npy(small, tmp_path / "onehot")
    A = np.load(bad / "sprites_A_train.npy")
    A[3, 0, 1] = 0.5
    np.save(bad / "sprites_A_train.npy", A)
    msg = npy_error(bad)
    assert "sprites_A_train.npy" in msg and "not one-hot" in msg

    bad = write_valid_npy(small, tmp_path / "truncated")
    path = bad / "sprites_X_train.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    msg = npy_error(bad)
    assert "sprites_X_train.npy" in msg and "not a readable .npy" in msg

    bad = write_valid_npy(small, tmp_path / "scale")
    X = np.load(bad / "sprites_X_test.npy")
    np.save(bad / "sprites_X_test.npy", X * 256 / 255)  # RGB/255 instead of RGB/256
    msg = npy_error(bad)
    assert "sprites_X_test.npy" in msg and "RGB/256" in msg

    bad = write_valid_npy(small, tmp_path / "leak")
    for kind in ("X", "A", "D"):  # test sequences offered as training data
        shutil.copy(bad / f"sprites_{kind}_test.npy", bad / f"sprites_{kind}_train.npy")
    msg = npy_error(bad)
    assert "sprites_A_train.npy" in msg and "not in the published train split" in msg


def test_shipped_hashes_are_those_of_the_sheets():
    listed = dict(line.split()[::-1] for line in (SHEETS / "SHA256SUMS").read_text().splitlines() if line)
    assert S.expected_sha256() == listed and len(listed) == 25
    assert {rel.split("/")[0] for rel in listed} == {"body", "bottomwear", "topwear", "hair", "shoes"}


def test_tampered_or_missing_sheets_are_rejected(tmp_path):
    sheets = copy_sheets(tmp_path / "sheets")
    image = Image.open(sheets / "hair/3.png").convert("RGBA")
    image.putpixel((10, 10), (255, 0, 0, 255))  # one pixel changed, still a valid 832×1344 PNG
    image.save(sheets / "hair/3.png")
    (sheets / "shoes/1.png").unlink()
    dm = SpritesDataModule(
        sheets_dir=str(sheets), n_characters=1, val_characters=1, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(ValueError) as err:
        dm.setup()
    msg = str(err.value)
    assert "hair/3.png: SHA-256" in msg and "does not match" in msg and "shoes/1.png: missing" in msg
    assert "body/0.png" not in msg  # the intact sheets are not blamed
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))


def test_download_fetches_and_verifies_the_sheets(tmp_path, monkeypatch):
    urls = []

    def fake_fetch(url, timeout=60.0):
        urls.append(url)
        return (SHEETS / url.split("/master/")[1]).read_bytes()

    monkeypatch.setattr(S, "_fetch", fake_fetch)
    dest = tmp_path / "dl"
    dm = SpritesDataModule(
        sheets_dir=str(dest), download=True, n_characters=1, val_characters=1, cache_dir=str(tmp_path / "c")
    )
    dm.setup()
    raw = "https://raw.githubusercontent.com/YingzhenLi/Sprites/master/"
    assert sorted(urls) == sorted(raw + rel for rel in S.expected_sha256())
    for rel, digest in S.expected_sha256().items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest
    assert dm.split_size("train") == 9
    urls.clear()
    S.ensure_sheets(dest, download=True)  # present and valid: nothing fetched again
    assert urls == []


def test_download_with_a_wrong_file_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_fetch", lambda url, timeout=60.0: b"<html>rate limited</html>")
    with pytest.raises(RuntimeError, match=r"body/0\.png has SHA-256 .* expected"):
        S.ensure_sheets(tmp_path, download=True)
    assert list(tmp_path.rglob("*")) == []  # no file, no temp file


def test_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(S, "_fetch", offline)
    with pytest.raises(RuntimeError) as err:
        S.ensure_sheets(tmp_path / "lpc", download=True)
    msg = str(err.value)
    assert "https://raw.githubusercontent.com/YingzhenLi/Sprites/master/body/0.png" in msg
    assert "by hand" in msg and str(tmp_path / "lpc") in msg
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_sheets_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDCD_SPRITES_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="data.sheets_dir"):
        S.resolve_sheets_dir(None)
    assert S.resolve_sheets_dir(None, download=True) == Path("data/lpc-sprites")
    (tmp_path / "data/lpc-sprites").mkdir(parents=True)
    assert S.resolve_sheets_dir(None) == Path("data/lpc-sprites")
    monkeypatch.setenv("SDCD_SPRITES_DIR", str(SHEETS))
    assert S.resolve_sheets_dir(None) == SHEETS
    assert S.resolve_sheets_dir("~/x") == Path.home() / "x"


# -- cache ----------------------------------------------------------------------------------------------
def test_truncated_or_corrupted_cache_is_rebuilt(tmp_path, monkeypatch):
    builds = []
    render = S.render_sequences
    monkeypatch.setattr(S, "render_sequences", lambda *a, **k: builds.append(1) or render(*a, **k))
    kw = dict(sheets_dir=str(SHEETS), cache_dir=str(tmp_path), n_characters=2, val_characters=1)

    def load():
        dm = SpritesDataModule(**kw)
        dm.setup()
        return all_rows(dm, "train")["x"]

    first = load()
    assert len(builds) == 2  # train and test arrays
    assert torch.equal(load(), first) and len(builds) == 2  # cache hit: nothing rendered
    cached = SpritesDataModule(**kw).cache_path / "train_x.npy"
    cached.write_bytes(cached.read_bytes()[:-1000])  # truncated
    assert torch.equal(load(), first) and len(builds) == 4
    data = bytearray(cached.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte flipped
    cached.write_bytes(bytes(data))
    assert torch.equal(load(), first) and len(builds) == 6
    assert S.read_cache(cached.parent, ["train_x", "test_x"]) is not None  # rewritten whole
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_key_depends_on_sheets_build_version_and_size(tmp_path, monkeypatch):
    a = SpritesDataModule(cache_dir=str(tmp_path)).cache_path
    b = SpritesDataModule(cache_dir=str(tmp_path), n_characters=2).cache_path
    monkeypatch.setenv("SDCD_CACHE_DIR", str(tmp_path / "env"))
    assert SpritesDataModule().cache_path.parent == tmp_path / "env" / "sprites"
    monkeypatch.setattr(S, "BUILD_VERSION", S.BUILD_VERSION + 1)
    c = SpritesDataModule(cache_dir=str(tmp_path)).cache_path
    assert len({a, b, c}) == 3 and S.sheets_key() in a.name


# -- arguments and the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_characters": 0}, "data.n_characters"), ({"val": "train"}, "data.val"),
     ({"val_characters": 0}, "data.val_characters"),
     ({"val": "test", "val_characters": 297}, "data.val_characters"), ({"batch_size": 0}, "data.batch_size")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpritesDataModule(**kwargs)


def test_lightning_cli_yaml(tmp_path, monkeypatch):
    from lightning import LightningModule
    from lightning.pytorch.cli import LightningCLI

    class Dummy(LightningModule):
        pass

    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: sdcd.data_modules.sprites.SpritesDataModule\n  init_args:\n"
        f"    n_characters: 2\n    val: test\n    val_characters: 1\n    sheets_dir: {SHEETS}\n"
        f"    cache_dir: {tmp_path / 'cache'}\n"
    )
    monkeypatch.setattr(sys, "argv", ["sdcd"])  # pytest's own arguments are not for the CLI
    cli = LightningCLI(
        Dummy, subclass_mode_data=True, run=False, args=["--config", str(config)],
        trainer_defaults={"logger": False, "enable_checkpointing": False},
        save_config_kwargs={"overwrite": True},
    )  # fmt: skip
    dm = cli.datamodule
    assert isinstance(dm, SpritesDataModule) and dm.n_characters == 2 and dm.val == "test"

    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SpritesDataModule, "data")
    text = parser.format_help()
    assert "use only the first n characters" in text and "holdout" in text and "--data.npy_dir" in text


# -- full build -----------------------------------------------------------------------------------------
def test_full_build_and_cache(tmp_path, monkeypatch):
    dm = SpritesDataModule(sheets_dir=str(SHEETS), cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    assert {s: dm.split_size(s) for s in dm.splits} == {"train": 8550, "val": 450, "test": 2664}
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        rows = rng.choice(dm.split_size(split), 3, replace=False)
        b = dm.batch(split, rows)
        for x, labels in zip(b["x"], b["labels"].numpy(), strict=True):
            sheet = reference_sheet(int(S.character_ids(labels[0, :4])))
            action, direction = MOTIONS[labels[0, 4]]
            want = np.stack([tile(sheet, ROW[action, direction], c) for c in COLS[action]])
            np.testing.assert_array_equal((x * 256).to(torch.uint8).numpy(), want)
    del dm, b

    def no_render(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(S, "render_sequences", no_render)
    published = SpritesDataModule(cache_dir=str(tmp_path), val="test", val_characters=10)
    published.setup()  # the same cache serves both val choices
    assert {s: published.split_size(s) for s in published.splits} == {"train": 9000, "val": 90, "test": 2664}
    assert set(published.split_characters("train")) == set(S.character_split()["train"])
