"""LPC Sprites I/O: the sheets, the character compositing, the published split, the peers' npy layout
and the cache (the DataModule is sdcd.data_modules.sprites).

LPC Sprites (Li & Mandt 2018): 1296 characters × 9 motions × 8 frames of 64×64 RGB.

Built from the Liberated Pixel Cup sprite sheets exactly as the original generator
(`YingzhenLi/Sprites`) does, then held in memory as a uint8 table; batches are assembled by indexing.

Pipeline:
1. Sheets: 25 PNGs (`body|bottomwear|topwear|hair/0-5.png`, `shoes/1.png`), 832×1344 = 21 rows × 13
   columns of 64×64 tiles, verified against the SHA-256 list shipped next to this file
   (`sprites_sha256.txt`, `sha256sum -c` format).
2. Characters: id c in [0, 1296) = base-6 digits (body, bottomwear, topwear, hair). Layers are
   alpha-composited onto opaque black in that order, then the shoes (Pillow's rounding, bit-exact).
3. Motions m = 3·action + direction, action in (walk, spellcast, slash), direction in (front, left,
   right); each is 8 tiles of one sheet row (see `_ROWS`, `_COLUMNS`).
4. Published split: characters permuted with RandomState(423), 1000 train / 296 test; sequences laid
   out motion-major, then shuffled with one RandomState(0): train (9000) then test (2664).
5. Pixels: float = uint8 / 256, as in the published arrays (so values lie in [0, 0.996]).
6. Cache: the uint8 arrays (train 9000 + test 2664 sequences, (N, 8, 3, 64, 64), 1.15 GB) go to
   `<cache_dir>/sprites/v<BUILD_VERSION>-<sheets key>-full/`, written atomically with a manifest of
   shapes, sizes and crc32 that is checked on every load; anything missing or off is rebuilt.
   `n_characters` builds (and caches apart) only the characters it uses.

Art credit: Liberated Pixel Cup (lpc.opengameart.org) and jrconway3/Universal-LPC-spritesheet;
CC-BY-SA 3.0 / GPL 3.0. The sheets are never stored in this repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from sdcd.io import atomic_write

log = logging.getLogger(__name__)

BUILD_VERSION = 1  # bump when the built arrays change: it is part of the cache key
SHA256_FILE = Path(__file__).with_name("sprites_sha256.txt")
DOWNLOAD_URL = "https://raw.githubusercontent.com/YingzhenLi/Sprites/master/{path}"
SHEET_DIR_CANDIDATES = ("data/lpc-sprites", "../shared/data/lpc-sprites")

TILE = 64
SHEET_ROWS, SHEET_COLS = 21, 13
N_OPTIONS = 6
N_CHARACTERS = N_OPTIONS**4  # 1296
N_TRAIN_CHARACTERS = 1000
N_FRAMES = 8
LAYERS = ("body", "bottomwear", "topwear", "hair")
SHOES = "shoes/1.png"
ACTIONS = ("walk", "spellcast", "slash")
DIRECTIONS = ("front", "left", "right")
N_MOTIONS = len(ACTIONS) * len(DIRECTIONS)  # 9
SPLIT_SEED, SHUFFLE_SEED = 423, 0

# Sheet row of each (action, direction) and the sheet column of each of the 8 frames.
_ROWS = {
    "walk": {"left": 9, "front": 10, "right": 11},
    "spellcast": {"left": 1, "front": 2, "right": 3},
    "slash": {"left": 13, "front": 14, "right": 15},
}
_COLUMNS = {
    "walk": (8, 1, 2, 3, 4, 5, 6, 7),  # idle frame 0 dropped, cycle rotated by one
    "spellcast": (0, 1, 2, 3, 4, 5, 4, 6),  # 7 frames, frame 4 repeated at position 6
    "slash": (0, 1, 2, 3, 4, 5, 4, 0),  # 6 frames, padded with frames 4 and 0
}
# MOTION_TILES[m, t]: sheet tile index (row·13 + column) of frame t of motion m = 3·action + direction.
MOTION_TILES = np.array(
    [[_ROWS[a][d] * SHEET_COLS + c for c in _COLUMNS[a]] for a in ACTIONS for d in DIRECTIONS], dtype=np.int64
)
USED_TILES = np.unique(MOTION_TILES)  # the 63 tiles ever cut; only these are composited
FRAME_SLOTS = np.searchsorted(USED_TILES, MOTION_TILES)  # (9, 8) positions in USED_TILES

NPY_NAMES = {"x": "sprites_X_{split}.npy", "a": "sprites_A_{split}.npy", "d": "sprites_D_{split}.npy"}
NPY_EXPECT = {
    "x": "float32 array (N, 8, 64, 64, 3) of RGB/256 in [0, 1)",
    "a": "one-hot array (N, 8, 4, 6) of [skin, pants, top, hair]",
    "d": "one-hot array (N, 8, 9) of action 3·a + d",
}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _default_cache_dir() -> Path:
    return Path(os.environ.get("SDCD_CACHE_DIR") or "~/.cache/sdcd").expanduser()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, write)


def _crc32(arr: np.ndarray) -> int:
    # crc32 runs at ~3 GB/s: the whole 1.15 GB table verifies in well under a second
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


def character_digits(char: np.ndarray) -> np.ndarray:
    """(N,) character ids -> (N, 4) option of (body, bottomwear, topwear, hair), most significant first."""
    char = np.asarray(char, dtype=np.int64)
    return np.stack([char // 216, char // 36 % 6, char // 6 % 6, char % 6], axis=-1)


def character_ids(digits: np.ndarray) -> np.ndarray:
    """(..., 4) options -> (...,) character ids (inverse of `character_digits`)."""
    digits = np.asarray(digits, dtype=np.int64)
    return ((digits[..., 0] * 6 + digits[..., 1]) * 6 + digits[..., 2]) * 6 + digits[..., 3]


def sequence_labels(char: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Per-frame labels (N, 8, 5) int64 = [skin, pants, top, hair, action] of each (character, motion)."""
    seq = np.concatenate([character_digits(char), np.asarray(motion, dtype=np.int64)[:, None]], axis=1)
    return np.repeat(seq[:, None, :], N_FRAMES, axis=1)


# ---------------------------------------------------------------------------------------------
# Published split (Li & Mandt's frame_to_npy.py + load_sprites.py)
# ---------------------------------------------------------------------------------------------
def character_split() -> dict[str, np.ndarray]:
    """Character ids of the published train (1000) and test (296) splits, in the seed-423 order."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(N_CHARACTERS)
    return {"train": perm[:N_TRAIN_CHARACTERS], "test": perm[N_TRAIN_CHARACTERS:]}


def published_order() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(character, motion) of every row of the published train (9000) and test (2664) arrays.

    Rows are laid out motion-major (characters in seed-423 order inside each motion), then shuffled by
    one RandomState(0): first the train permutation, then the test one.
    """
    rng = np.random.RandomState(SHUFFLE_SEED)
    out = {}
    for split, chars in character_split().items():
        char = np.tile(chars, N_MOTIONS)
        motion = np.repeat(np.arange(N_MOTIONS), len(chars))
        perm = rng.permutation(len(char))
        out[split] = (char[perm], motion[perm])
    return out


# ---------------------------------------------------------------------------------------------
# Sheets: location, verification, download
# ---------------------------------------------------------------------------------------------
def expected_sha256() -> dict[str, str]:
    """{relative path: sha256} of the 25 sheets the benchmark uses."""
    out = {}
    for line in SHA256_FILE.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip().lstrip("*")] = digest
    return out


def sheets_key() -> str:
    """Cache key part for the sheets: the sheets in use always match this list, so hashing it hashes them."""
    text = "".join(f"{rel} {h}\n" for rel, h in sorted(expected_sha256().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """GET `url` (monkeypatched in tests)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def resolve_sheets_dir(sheets_dir: str | os.PathLike | None, download: bool = False) -> Path:
    """The sheets folder: `sheets_dir`, else the first existing of $SDCD_SPRITES_DIR, ./data/lpc-sprites,
    ../shared/data/lpc-sprites; with `download` and none found, where to download (./data/lpc-sprites)."""
    if sheets_dir is not None:
        return Path(sheets_dir).expanduser()
    env = os.environ.get("SDCD_SPRITES_DIR")
    candidates = ([Path(env).expanduser()] if env else []) + [Path(p) for p in SHEET_DIR_CANDIDATES]
    for path in candidates:
        if path.is_dir():
            return path
    if download:
        return candidates[0]
    raise FileNotFoundError(
        "No LPC sprite sheets found (data.sheets_dir is unset; looked in "
        + ", ".join(str(p) for p in candidates)
        + "). Pass data.sheets_dir=<folder>, set SDCD_SPRITES_DIR, or use data.download=true to fetch "
        f"the 25 sheets from {DOWNLOAD_URL.format(path='')} into ./data/lpc-sprites."
    )


def _download(rel: str, sheets_dir: Path, digest: str) -> None:
    """Fetch one sheet into `sheets_dir/rel`; it lands there only once its SHA-256 matches."""
    url = DOWNLOAD_URL.format(path=rel)
    try:
        data = _fetch(url)
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"Could not download sprite sheet {rel} from {url} ({err}). Without network access, download "
            f"the 25 files listed in {SHA256_FILE} (same relative paths, from "
            f"{DOWNLOAD_URL.format(path='')}) by hand and put them under {sheets_dir}/, "
            "or point data.sheets_dir / SDCD_SPRITES_DIR at a folder that has them."
        ) from err
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        raise RuntimeError(f"Downloaded {url} has SHA-256 {got}, expected {digest} (see {SHA256_FILE}).")
    atomic_write(sheets_dir / rel, lambda tmp: tmp.write_bytes(data))


def ensure_sheets(sheets_dir: Path, download: bool = False) -> dict[str, bytes]:
    """Contents of the 25 sheets, each checked against its shipped SHA-256 (missing ones downloaded
    when `download`). Raises naming every missing or mismatching file."""
    expected = expected_sha256()
    out, problems = {}, []
    for rel, digest in expected.items():
        path = sheets_dir / rel
        data = path.read_bytes() if path.is_file() else None
        ok = data is not None and hashlib.sha256(data).hexdigest() == digest
        if not ok and download:
            _download(rel, sheets_dir, digest)
            data, ok = path.read_bytes(), True
        if data is None:
            problems.append(f"{path}: missing")
        elif not ok:
            problems.append(
                f"{path}: SHA-256 {hashlib.sha256(data).hexdigest()} ({len(data)} bytes) does not match "
                f"the expected {digest} (wrong or corrupted file; original: {DOWNLOAD_URL.format(path=rel)})"
            )
        else:
            out[rel] = data
    if problems:
        hint = "" if download else "\nUse data.download=true to fetch them, or set data.sheets_dir."
        listing = "\n  ".join(problems)
        raise ValueError(f"LPC sprite sheets in {sheets_dir} failed verification:\n  {listing}{hint}")
    return out


def decode_sheet(data: bytes, name: str) -> np.ndarray:
    """PNG bytes -> (63, 64, 64, 4) uint8 RGBA of the used tiles (palette PNGs keep their transparency)."""
    image = Image.open(io.BytesIO(data))
    if image.size != (SHEET_COLS * TILE, SHEET_ROWS * TILE):
        raise ValueError(f"sprite sheet {name}: size {image.size}, expected 832×1344 (13×21 tiles of 64×64)")
    rgba = np.asarray(image.convert("RGBA"))  # (1344, 832, 4)
    tiles = rgba.reshape(SHEET_ROWS, TILE, SHEET_COLS, TILE, 4).transpose(0, 2, 1, 3, 4)
    return tiles.reshape(SHEET_ROWS * SHEET_COLS, TILE, TILE, 4)[USED_TILES]


# ---------------------------------------------------------------------------------------------
# Compositing and rendering (vectorised over characters)
# ---------------------------------------------------------------------------------------------
def over(dst: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`rgb` with `alpha` composited over the opaque `dst`, all uint8, broadcastable.

    Equals Pillow's `Image.alpha_composite` on an opaque canvas bit for bit: round((s·a + d·(255−a))/255).
    """
    a = alpha.astype(np.uint16)
    v = rgb.astype(np.uint16) * a + dst.astype(np.uint16) * (255 - a) + 127  # <= 65152: fits uint16
    return (v // 255).astype(np.uint8)


class Layers:
    """The decoded sheets, stored as the sparse pixels each layer option actually covers."""

    def __init__(self, sheets: dict[str, bytes]):
        def sparse(rel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            px = decode_sheet(sheets[rel], rel).reshape(-1, 4)  # (P = 63·64·64, 4)
            idx = np.flatnonzero(px[:, 3])
            return idx, px[idx, :3], px[idx, 3:]

        self.n_pixels = len(USED_TILES) * TILE * TILE
        # the body is the first layer over black: composite it once per option, densely
        black = np.zeros((self.n_pixels, 3), np.uint8)
        body = []
        for rel in (f"body/{o}.png" for o in range(N_OPTIONS)):
            px = decode_sheet(sheets[rel], rel).reshape(-1, 4)
            body.append(over(black, px[:, :3], px[:, 3:]))
        self.body = np.stack(body)  # (6, P, 3)
        self.upper = {k: [sparse(f"{k}/{o}.png") for o in range(N_OPTIONS)] for k in LAYERS[1:]}
        self.shoes = sparse(SHOES)

    def compose(self, chars: np.ndarray) -> np.ndarray:
        """(n,) character ids -> (n, 63, 64, 64, 3) uint8 composited tiles."""
        digits = character_digits(chars)
        canvas = self.body[digits[:, 0]]  # (n, P, 3)
        for k, layer in enumerate(LAYERS[1:], start=1):
            for option, (idx, rgb, alpha) in enumerate(self.upper[layer]):
                sel = np.flatnonzero(digits[:, k] == option)
                if sel.size:
                    ix = np.ix_(sel, idx)  # only the pixels this option covers
                    canvas[ix] = over(canvas[ix], rgb, alpha)
        idx, rgb, alpha = self.shoes
        canvas[:, idx] = over(canvas[:, idx], rgb, alpha)
        return canvas.reshape(len(chars), len(USED_TILES), TILE, TILE, 3)


def render_sequences(
    layers: Layers, char: np.ndarray, motion: np.ndarray, chunk: int = 96, progress: bool = False
) -> np.ndarray:
    """Frames of sequences (char[i], motion[i]) -> (N, 8, 3, 64, 64) uint8, composing each character once."""
    char, motion = np.asarray(char, dtype=np.int64), np.asarray(motion, dtype=np.int64)
    out = np.empty((len(char), N_FRAMES, 3, TILE, TILE), np.uint8)
    order = np.argsort(char, kind="stable")
    sorted_char = char[order]
    uniq = np.unique(char)
    starts = range(0, len(uniq), chunk)
    if progress:
        from rich.progress import track

        desc = f"Composing {len(uniq)} Sprites characters"
        starts = track(starts, description=desc, total=len(starts))  # type: ignore[assignment]
    for start in starts:
        cs = uniq[start : start + chunk]
        tiles = layers.compose(cs)  # (nc, 63, 64, 64, 3)
        lo, hi = np.searchsorted(sorted_char, cs[0], "left"), np.searchsorted(sorted_char, cs[-1], "right")
        rows = order[lo:hi]  # the sequences of these characters
        slot = np.searchsorted(cs, char[rows])[:, None]  # (nr, 1) position of each row's character
        frames = tiles[slot, FRAME_SLOTS[motion[rows]]]  # (nr, 8, H, W, 3)
        out[rows] = frames.transpose(0, 1, 4, 2, 3)
    return out


# ---------------------------------------------------------------------------------------------
# The peers' npy layout (sprites_{X,A,D}_{train,test}.npy)
# ---------------------------------------------------------------------------------------------
def write_sprites_npy(out_dir: str | os.PathLike, split: str, x: np.ndarray, labels: np.ndarray) -> None:
    """Write one split in the peers' layout, each file atomically.

    Args:
        out_dir: folder for `sprites_{X,A,D}_{split}.npy`.
        split: "train" or "test" (any name is accepted and used in the file names).
        x: (N, 8, 3, 64, 64) uint8 frames; written as float32 (N, 8, 64, 64, 3) = x / 256.
        labels: (N, 8, 5) int [skin, pants, top, hair, action]; written as float32 one-hot
            A (N, 8, 4, 6) and D (N, 8, 9).
    """
    x, labels = np.asarray(x), np.asarray(labels)
    if x.dtype != np.uint8 or x.ndim != 5 or x.shape[1:] != (N_FRAMES, 3, TILE, TILE):
        raise ValueError(f"write_sprites_npy: x is {x.dtype} {x.shape}, expected uint8 (N, 8, 3, 64, 64)")
    if labels.shape != (len(x), N_FRAMES, 5):
        raise ValueError(f"write_sprites_npy: labels shape {labels.shape}, expected {(len(x), N_FRAMES, 5)}")
    n_classes = np.array([N_OPTIONS] * 4 + [N_MOTIONS])
    if ((labels < 0) | (labels >= n_classes)).any():
        raise ValueError("write_sprites_npy: labels out of range; expected static in [0, 6), action [0, 9)")
    out_dir = Path(out_dir)

    def write_x(tmp: Path) -> None:
        shape = (len(x), N_FRAMES, TILE, TILE, 3)
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for s in range(0, len(x), 512):  # chunks: the float32 copy of the full train split is 3.5 GB
            mm[s : s + 512] = x[s : s + 512].transpose(0, 1, 3, 4, 2).astype(np.float32) / 256
        mm.flush()
        del mm

    atomic_write(out_dir / NPY_NAMES["x"].format(split=split), write_x)
    eye6, eye9 = np.eye(N_OPTIONS, dtype=np.float32), np.eye(N_MOTIONS, dtype=np.float32)
    _save_npy(out_dir / NPY_NAMES["a"].format(split=split), eye6[labels[..., :4]])
    _save_npy(out_dir / NPY_NAMES["d"].format(split=split), eye9[labels[..., 4]])


def _open_npy(path: Path, trailing: tuple[int, ...], kinds: str, expect: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected a {expect} (the npy layout of SKD/SPYL/DBSE)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:  # truncated or not an npy file
        raise ValueError(f"{path}: not a readable .npy file ({err}); expected a {expect}") from err
    if arr.ndim != len(trailing) + 1 or arr.shape[1:] != trailing or arr.dtype.kind not in kinds:
        raise ValueError(f"{path}: {arr.dtype} array of shape {arr.shape}; expected a {expect}")
    return arr


def _one_hot_index(arr: np.ndarray, path: Path, expect: str) -> np.ndarray:
    a = np.asarray(arr)
    if not (((a == 0) | (a == 1)).all() and (a.sum(-1) == 1).all()):
        raise ValueError(f"{path}: not one-hot along its last axis; expected a {expect}")
    return a.argmax(-1)


def read_sprites_npy(npy_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, Callable]:
    """Validate one split of the peers' layout: per-frame labels (N, 8, 5) and a loader
    `load(rows) -> (n, 8, 3, 64, 64) uint8` that converts only the requested rows of X."""
    paths = {k: npy_dir / name.format(split=split) for k, name in NPY_NAMES.items()}
    xm = _open_npy(paths["x"], (N_FRAMES, TILE, TILE, 3), "f", NPY_EXPECT["x"])
    am = _open_npy(paths["a"], (N_FRAMES, 4, N_OPTIONS), "fiub", NPY_EXPECT["a"])
    dm = _open_npy(paths["d"], (N_FRAMES, N_MOTIONS), "fiub", NPY_EXPECT["d"])
    for k, arr in (("a", am), ("d", dm)):
        if len(arr) != len(xm):
            raise ValueError(f"{paths[k]}: {len(arr)} sequences but {paths['x'].name} has {len(xm)}")
    static = _one_hot_index(am, paths["a"], NPY_EXPECT["a"])  # (N, 8, 4)
    if (static != static[:, :1]).any():
        raise ValueError(f"{paths['a']}: static labels change within a sequence; expected them constant")
    labels = np.concatenate([static, _one_hot_index(dm, paths["d"], NPY_EXPECT["d"])[..., None]], -1)

    def load(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), N_FRAMES, 3, TILE, TILE), np.uint8)
        for s in range(0, len(rows), 256):
            v = np.asarray(xm[rows[s : s + 256]], dtype=np.float32) * 256
            q = np.rint(v)
            if v.size and (q.min() < 0 or q.max() > 255 or np.abs(v - q).max() > 1e-3):
                raise ValueError(
                    f"{paths['x']}: pixel values are not RGB/256 in [0, 1) (k/256, k = 0..255) as the "
                    f"original generator writes them; expected a {NPY_EXPECT['x']}"
                )
            out[s : s + 256] = q.astype(np.uint8).transpose(0, 1, 4, 2, 3)
        return out

    return labels.astype(np.int64), character_ids(labels[:, 0, :4]), load


# ---------------------------------------------------------------------------------------------
# Cache of the built uint8 arrays
# ---------------------------------------------------------------------------------------------
def write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Each array as `<name>.npy`, then the manifest (shape, bytes, crc32), last: no manifest, no cache."""
    files = {}
    for name, arr in arrays.items():
        path = cache / f"{name}.npy"
        _save_npy(path, arr)
        files[path.name] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "bytes": path.stat().st_size,
            "crc32": _crc32(arr),
        }
    manifest = {"build_version": BUILD_VERSION, "sheets_key": sheets_key(), "files": files}
    atomic_write(cache / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def read_cache(cache: Path, names: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) when anything is missing, truncated or corrupted."""
    manifest_path = cache / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        files = json.loads(manifest_path.read_text())["files"]
        out = {}
        for name in names:
            meta, path = files[f"{name}.npy"], cache / f"{name}.npy"
            if not path.is_file() or path.stat().st_size != meta["bytes"]:
                raise ValueError(f"{path} is missing or truncated")
            arr = np.load(path, allow_pickle=False)
            same = list(arr.shape) == meta["shape"] and str(arr.dtype) == meta["dtype"]
            if not same or _crc32(arr) != meta["crc32"]:
                raise ValueError(f"{path} does not match its manifest (shape/dtype/checksum)")
            out[name] = arr
        return out
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as err:
        log.warning("Ignoring the Sprites cache in %s (%s); rebuilding it.", cache, err)
        return None


def cache_is_complete(cache: Path, names: Iterable[str]) -> bool:
    """Cheap check (manifest + file sizes, no checksum) used by `prepare_data`."""
    try:
        files = json.loads((cache / "manifest.json").read_text())["files"]
        return all((cache / f"{n}.npy").stat().st_size == files[f"{n}.npy"]["bytes"] for n in names)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------------
