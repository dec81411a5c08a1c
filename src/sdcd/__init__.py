"""sdcd: static/dynamic conditional disentanglement of video (Simon et al., ECCV 2024) in PyTorch Lightning."""

__version__ = "0.1.0"
