"""Small data modules for tests."""

import torch

from sdcd.data_modules.base import IndexedDataModule


class RandomFrames(IndexedDataModule):
    """Random frames for schedule tests (the data does not matter here)."""

    n_frames, frame_size, n_channels = 4, 32, 3

    def _build(self, split):
        self.table = torch.rand(64, 4, 3, 32, 32)
        return 64

    def materialize(self, split, index):
        return {"x": self.table.to(index.device)[index]}
