"""Every file sdcd writes goes through one atomic writer, and file hashes live here.

`atomic_write(path, fill)` runs `fill(tmp)` on a hidden temp file next to `path` (`.<name>.<random>.tmp`,
the usual file mode), fsyncs it, renames it over `path` with `os.replace` (atomic on POSIX and
Windows) and fsyncs the folder. A crash therefore leaves either the old file or the complete new one,
never half of it; on an error the temp file is removed, and a temp file left by a killed writer is
removed by the next write of the same file. Temp names carry the writer's host and process id, so two
processes writing the same file at once (two runs building one Sprites cache) never remove each
other's temp file: whichever renames last wins, and both wrote the whole file. Checkpoints, judge files,
`config.yaml`, `metrics.json`, pictures, sweep summaries and the Sprites cache all use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Write `path` through `fill(tmp)`, which writes the whole file at the temp path `tmp`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
FOREIGN_TEMP_AGE_S = 24 * 3600  # another host's temp file is only removed once it is this old


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of `path` whose writer is gone: on this host, a process id that no longer
    runs; from another host (a shared file system), a day old; an older sdcd's names (no id), always.
    Temp files of other names (`.x.npy.*.tmp` when writing `x`) are never touched."""
    name = re.escape(path.name)
    ours, legacy = re.compile(rf"\.{name}\.([^.]+)\.(\d+)\.[^.]+\.tmp"), re.compile(rf"\.{name}\.[^.]+\.tmp")
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        if m := ours.fullmatch(temp.name):
            host, pid = m.group(1), int(m.group(2))
            if host == _HOST and _process_runs(pid):
                continue
            if host != _HOST and _age_s(temp) < FOREIGN_TEMP_AGE_S:
                continue
        elif not legacy.fullmatch(temp.name):
            continue
        temp.unlink(missing_ok=True)


def _process_runs(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


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
