"""sdcd.io: the one atomic writer."""

import pytest
import torch

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
