"""Every file sdcd writes goes through one atomic writer, and file hashes live here.

`atomic_write(path, fill)` runs `fill(tmp)` on a hidden temp file next to `path` (`.<name>.<random>.tmp`,
the usual file mode), fsyncs it, renames it over `path` with `os.replace` (atomic on POSIX and
Windows) and fsyncs the folder. A crash therefore leaves either the old file or the complete new one,
never half of it; on an error the temp file is removed, and a temp file left by a killed writer is
removed by the next write of the same file. Checkpoints, judge files, `config.yaml`, `metrics.json`,
pictures, sweep summaries and the Sprites cache all use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Write `path` through `fill(tmp)`, which writes the whole file at the temp path `tmp`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the file gets the usual mode
        fill(Path(tmp))
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY)  # makes the rename durable
    return path


def atomic_write_stream(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through `write(fileobj)` on a binary file object."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return atomic_write(path, fill)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path`."""
    import torch  # here, not at the top: `sdcd.report` writes files and should not pay for importing torch

    return atomic_write_stream(path, lambda fh: torch.save(obj, fh))


def _fsync(path: str | os.PathLike, flags: int) -> None:
    """fsync a file or folder (a no-op where it cannot be opened that way, e.g. folders on Windows)."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file, None if there is no file."""
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
