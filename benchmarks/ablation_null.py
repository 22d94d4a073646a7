"""How often `mtsearch report` calls some cell of an ablation table better or worse than the
reference when every cell is truly equal: tables simulated through the real decision code
(`ablation.compare_cells`) with a stand-in scorer instead of training.

Each table has a reference and M other cells over `--seeds` paired seeds. A cell's score on a seed
is a shared seed effect (sd 1: what pairing cancels) plus its own noise (sd 1); with `--step` it is
rounded to that step, as Hit@1 on N videos moves by 1/N. Every cell has the same mean, so any
"helps" or "hurts" is false. The family-wise rate is the fraction of tables with at least one; Holm
over the table's comparisons keeps it at alpha, where reading each comparison alone does not.

    python benchmarks/ablation_null.py                 # 2,000 tables for M = 3, 7, 15
    python benchmarks/ablation_null.py --step 0.5 --seeds 3

The last line, `ablation_familywise_max: 0.0NN`, is the largest family-wise rate over M with Holm.
"""

from __future__ import annotations

import argparse
import random

from mtsearch.results.ablation import CellScores, compare_cells


def one_table(cells: int, seeds: int, step: float | None, alpha: float,
              rng: random.Random) -> tuple[bool, bool]:
    """(some verdict with Holm, some comparison's own p below alpha)."""
    shared = [rng.gauss(0.0, 1.0) for _ in range(seeds)]

    def scores() -> CellScores:
        values = [shared[s] + rng.gauss(0.0, 1.0) for s in range(seeds)]
        return CellScores({s: (round(v / step) * step if step else v) for s, v in enumerate(values)})

    reference = scores()
    out = compare_cells(reference, {f"c{i}": scores() for i in range(cells)}, "max", metric="loss",
                        alpha=alpha)
    held = any(c.verdict in ("helps", "hurts") for c in out.values())
    alone = any(c.p is not None and c.p < alpha for c in out.values())
    return held, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--cells", default="3,7,15", help="comparisons per table")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--step", type=float, default=None, help="round scores to this step")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"{args.tables} tables each, {args.seeds} seeds, alpha {args.alpha}, step {args.step or 'none'}; "
          "every cell equal to the reference")
    print(f"{'comparisons':>11}  {'family-wise, Holm':>17}  {'each alone':>10}")
    worst = 0.0
    for cells in (int(x) for x in args.cells.split(",")):
        runs = [one_table(cells, args.seeds, args.step, args.alpha, rng) for _ in range(args.tables)]
        holm_rate = sum(r[0] for r in runs) / args.tables
        alone_rate = sum(r[1] for r in runs) / args.tables
        worst = max(worst, holm_rate)
        print(f"{cells:>11}  {holm_rate:>17.3f}  {alone_rate:>10.3f}")
    print(f"ablation_familywise_max: {worst:.3f}")


if __name__ == "__main__":
    main()
