"""The protocol's linear probes (`sdcd.probes`) alone, on a trained Sprites SDCD checkpoint: every factor
from f's posterior mean, from a sample of q(f | x), and from the time-mean of λ; fit on the train split,
scored on test, as `make eval` does — without the judge's tests, so older runs can be re-probed in a
minute or two (e.g. for `probe/f_sample`, which metrics.json files written before 2026-12-05 lack).

    python bench/probe_codes.py --checkpoint RUN/checkpoints/last.ckpt [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an SDCD checkpoint (.ckpt)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the f samples")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from sprites_run import load_test_run

    from sdcd.probes import linear_probes

    dm, model, _ = load_test_run(args.checkpoint)
    torch.manual_seed(args.seed)
    res = linear_probes(model, dm, "train", "test", max_train=10_000)  # as the protocol's callback
    if args.json:
        print(json.dumps(res))
        return 0
    names = [f.name for f in dm.factors]
    print("| linear probe (train → test) | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for code, what in (("f", "f (posterior mean)"), ("f_sample", "f (a sample of q(f|x))"), ("lam", "time-mean of λ")):
        print(f"| {what} | " + " | ".join(f"{100 * res[f'probe/{code}/{n}']:.2f}%" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
