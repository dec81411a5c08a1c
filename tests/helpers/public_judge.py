"""A stand-in for the public Sprites judge file (C-DSVAE's `sprite_judge.tar`): the network
`classifier_Sprite_all` written from its description (DCGAN frame encoder c1..c5, a BiLSTM named
`bilstm`, heads cls_*; outputs in the order action, skin, pants, top, hair), randomly initialised.
Tests save its state dict the way the peers' checkpoints hold it and check that sdcd loads it."""

import torch
from torch import nn


def _block(c_in, c_out, act):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), act)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        for i, (a, b) in enumerate([(3, 64), (64, 128), (128, 256), (256, 512)], start=1):
            m = nn.Module()
            m.main = _block(a, b, nn.LeakyReLU(0.2))
            setattr(self, f"c{i}", m)
        self.c5 = nn.Sequential(nn.Conv2d(512, 128, 4, 1, 0), nn.BatchNorm2d(128), nn.Tanh())

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"c{i}").main(x)
        return self.c5(x).flatten(1)


class PublicSpritesJudge(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.bilstm = nn.LSTM(128, 256, 1, bidirectional=True, batch_first=True)
        for name, k in [("cls_skin", 6), ("cls_top", 6), ("cls_pant", 6), ("cls_hair", 6), ("cls_action", 9)]:
            setattr(self, name, nn.Sequential(nn.Linear(512, 256), nn.ReLU(True), nn.Linear(256, k)))

    def forward(self, x):  # x: (B, T, 3, 64, 64) → (action, skin, pants, top, hair) logits
        b, t = x.shape[:2]
        h, _ = self.bilstm(self.encoder(x.flatten(0, 1)).view(b, t, -1))
        seq = torch.cat([h[:, t - 1, :256], h[:, 0, 256:]], dim=1)
        return (self.cls_action(seq), self.cls_skin(seq), self.cls_pant(seq), self.cls_top(seq), self.cls_hair(seq))


def write_public_judge(path, seed: int = 0) -> PublicSpritesJudge:
    """Save a random public-format judge (non-trivial BatchNorm statistics) at `path`; return it (eval)."""
    torch.manual_seed(seed)
    net = PublicSpritesJudge()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"epoch": 100, "state_dict": net.state_dict()}, path)
    return net.eval()
