"""How far a slot sharing a process is from its run alone, on this machine's device.

K slots of one preset (all branches, differing in seed, learning rate, loss weights and fps)
train side by side with `fit_side_by_side` (a CUDA stream each on a GPU), then each trains alone with `fit`.
Per slot it prints the largest relative difference over the epochs' losses and the norm-relative
difference of the final weights (BatchNorm statistics included). On the CPU in fp32 both are 0:
the same kernels on the same shapes (tests/test_side_by_side.py holds it to 1e-4). On a GPU, autotuned
kernels and bf16 may reduce sums in another order, and this measures by how much. The last line is

    side_by_side_vs_alone: losses <max relative>, weights <max norm-relative>

    python benchmarks/side_by_side_exactness.py                     # small on CUDA, tiny on the CPU
    python benchmarks/side_by_side_exactness.py --preset thesis --slots 2 --epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def _losses(history: list[dict]) -> list[float]:
    return [row[key] for row in history for key in ("loss", "loss_cls", "loss_track", "loss_dir")
            if row.get(key) is not None]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)
    return saved["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="default: small on CUDA, tiny on the CPU")
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default=None, help="a synthetic set (written if missing)")
    args = parser.parse_args()

    from train_step import synthetic_root, trial_config

    from mtsearch.train import fit
    from mtsearch.train.side_by_side import fit_side_by_side

    cuda = torch.cuda.is_available()
    preset = args.preset or ("small" if cuda else "tiny")
    data = synthetic_root(8 if not cuda else 20, args.data)
    cfgs = [
        trial_config(preset, "cls+track+dir", "bf16g" if cuda else "fp32",
                     **{"data.root": str(data), "data.cache_dir": str(data.parent / "cache"),
                        "device": "cuda" if cuda else "cpu", "optim.epochs": args.epochs,
                        "eval.every": args.epochs, "seed": 5 + k, "optim.lr": 1e-3 / (1 + k),
                        "loss.w_track": 0.25 * (1 + k), "data.fps": (30, 15, 20)[k % 3],
                        "threads": 1 if not cuda else None})
        for k in range(args.slots)
    ]
    with tempfile.TemporaryDirectory(prefix="mtsearch-exact-") as tmp:
        root = Path(tmp)
        shared_dirs = [root / f"shared{k}" for k in range(len(cfgs))]
        together = fit_side_by_side(cfgs, shared_dirs)
        worst_loss = worst_weight = 0.0
        for k, (cfg, result) in enumerate(zip(cfgs, together, strict=True)):
            if isinstance(result, BaseException):
                raise result
            alone = fit(cfg, root / f"alone{k}")
            pairs = list(zip(_losses(result.history), _losses(alone.history), strict=True))
            loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
            mine, theirs = _weights(shared_dirs[k]), _weights(root / f"alone{k}")
            weight_rel = max(
                float((mine[name].double() - tensor.double()).norm()) / (float(tensor.double().norm()) or 1.0)
                for name, tensor in theirs.items() if tensor.is_floating_point())
            worst_loss, worst_weight = max(worst_loss, loss_rel), max(worst_weight, weight_rel)
            print(f"slot {k} (seed {cfg.seed}, lr {cfg.optim.lr:.2g}, w_track {cfg.loss.w_track:g}, fps "
                  f"{cfg.data.fps}): losses {loss_rel:.2e}, weights {weight_rel:.2e}")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"{preset} on {device}, {len(cfgs)} slots, {args.epochs} epochs")
    print(f"side_by_side_vs_alone: losses {worst_loss:.2e}, weights {worst_weight:.2e}")


if __name__ == "__main__":
    main()
