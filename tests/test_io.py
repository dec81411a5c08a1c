"""sdcd.io: the one atomic writer."""

import os
import subprocess
import sys
import time

import pytest
import torch

import sdcd.io
from sdcd.io import atomic_torch_save, atomic_write, atomic_write_text, file_sha256


def test_a_failing_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"partial")
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "last.ckpt")
    assert not stale.exists()
    assert torch.equal(torch.load(tmp_path / "last.ckpt")["w"], torch.arange(3))
    assert file_sha256(tmp_path / "last.ckpt") is not None and file_sha256(tmp_path / "none") is None


def test_a_concurrent_writer_of_the_same_file_keeps_the_other_writers_temp_file(tmp_path):
    """Two processes building one cache file at once: the second writer's stale-temp cleanup must not
    remove the first's temp file (it did, and the first crashed at its rename)."""
    path = tmp_path / "train_x.npy"

    def first(tmp):
        tmp.write_bytes(b"whole file")
        atomic_write(path, lambda t: t.write_bytes(b"whole file"))  # the other writer, meanwhile
        assert tmp.exists()

    atomic_write(path, first)
    assert path.read_bytes() == b"whole file"
    assert [p.name for p in tmp_path.iterdir()] == ["train_x.npy"]


def test_only_temp_files_of_gone_writers_and_of_this_name_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    host = sdcd.io._HOST
    dead = tmp_path / f".x.{host}.{dead_pid}.abc.tmp"
    live = tmp_path / f".x.{host}.{os.getpid()}.def.tmp"
    foreign = tmp_path / ".x.otherhost.1.ghi.tmp"
    other_name = tmp_path / f".x.npy.{host}.{dead_pid}.jkl.tmp"
    for p in (dead, live, foreign, other_name):
        p.write_bytes(b"partial")
    atomic_write(tmp_path / "x", lambda t: t.write_bytes(b"x"))
    assert not dead.exists()
    assert live.exists() and foreign.exists() and other_name.exists()
    old = time.time() - sdcd.io.FOREIGN_TEMP_AGE_S - 60
    os.utime(foreign, (old, old))
    atomic_write(tmp_path / "x", lambda t: t.write_bytes(b"y"))
    assert not foreign.exists() and (tmp_path / "x").read_bytes() == b"y"
