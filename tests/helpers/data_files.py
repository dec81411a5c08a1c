"""Data files that several test modules write: LPC sheets copies, the peers' npy layout, videos."""

import shutil
from pathlib import Path

import av
import numpy as np

from sdcd.data_modules import sprites_io as S

ROOT = Path(__file__).resolve().parents[2]
SHEETS = (ROOT / ".." / "shared" / "data" / "lpc-sprites").resolve()


def write_valid_npy(small, folder: Path) -> Path:
    folder.mkdir()
    small.export_npy(folder)
    return folder


# -- sheet verification and download -------------------------------------------------------------------
def copy_sheets(dest: Path) -> Path:
    for rel in S.expected_sha256():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHEETS / rel, dest / rel)
    return dest


# -- generated data ----------------------------------------------------------------------------------
def write_video(path, n: int, width: int = 32, height: int = 32, codec: str = "libx264", **kw):
    """`n` uniform frames coloured by their index (see the module docstring).

    kw: `faststart` (index at the front), `noise` (add noise, so frame data dominates the file), `gop`.
    """
    options = {"crf": "0", "g": str(kw.get("gop", 250))} if codec == "libx264" else {}
    rng = np.random.default_rng(0)
    with av.open(
        str(path), "w", options={"movflags": "faststart"} if kw.get("faststart") else {}
    ) as container:
        stream = container.add_stream(codec, rate=25, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(n):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:, : width // 2], frame[:, width // 2 :] = 8 * (i % 32) + 4, 8 * (i // 32) + 4
            if kw.get("noise"):
                frame = (frame + rng.integers(0, 3, frame.shape)).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
