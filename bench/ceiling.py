"""The ceiling of a Sprites checkpoint: what its frame autoencoder can draw, judged, on the test split.

The flow is a bijection, so SDCD's reconstruction of a sequence from its own codes is exactly the frozen
autoencoder's reconstruction of its features, whatever stage 2 learns: the protocol's `reconstruction`
tests on a *stage-1* checkpoint bound every swap accuracy that a stage 2 trained on it can reach
(docs/sprites.md, "The ceiling"). This reads that bound right after stage 1, before stage 2 is spent on it.
`--tests` runs other tests of the protocol instead, e.g. `--tests swap` to score a trained run under a
second judge without writing anything into its run directory.

    python bench/ceiling.py --checkpoint RUN/checkpoints/last.ckpt --judge judges/sprites_cpu.pt [--json]
    python bench/ceiling.py --checkpoint RUN/checkpoints/last.ckpt --judge judges/sprites_cpu_s2.pt --tests swap
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sdcd.results import TESTS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an SDCD checkpoint (.ckpt), stage 1 or 2")
    ap.add_argument("--judge", required=True, help="a Sprites judge file (make judge DATA=sprites_cpu)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="repetitions, each with fresh random draws (feature noise, partners)")
    ap.add_argument("--max-sequences", type=int, default=None, help="score only the first N test sequences")
    ap.add_argument("--tests", nargs="+", default=["reconstruction", "reconstruction_mean"], choices=TESTS,
                    help="which tests of the protocol to run (default: the two reconstructions, the ceiling)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from sprites_run import load_test_run

    from sdcd.evaluation import evaluate
    from sdcd.results import headline_table, per_factor_table

    dm, model, judge = load_test_run(args.checkpoint, args.judge)
    res = evaluate(model, dm, judge, split="test", repeats=args.repeats, max_sequences=args.max_sequences,
                   tests=tuple(args.tests))
    if args.json:
        print(json.dumps(res))
        return 0
    print(headline_table(res))  # the static and dynamic means, as metrics.md has them
    print(per_factor_table(res, dm.factors))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
