"""How long one thesis trial takes on this machine, projected from the trainer's measured speed.

At the `thesis` geometry on CUDA (on a machine without a GPU: the `tiny` geometry, said in the
output), as the trainer runs them:
- the bare training step (`TrainStep` on generated uint8 clips): the baseline;
- the trainer's end-to-end loop (`fit`) over the built-in-style synthetic set, data included:
  best training clips/s of epochs 2..E (epoch 1 pays for cuDNN autotuning and worker start-up);
- evaluation (`evaluate`, forward only, `eval.batch_size`) over that set's test clips;
- the one-off warm-up: what the first epoch and the first evaluation took beyond their steady
  speed (torch.compile where the trainer compiles, cuDNN autotuning, graph capture, workers).
It then projects a thesis trial: HMDB-51 split 1, 100 epochs of 3,570 training clips, and an
evaluation of 11,200 clips at each epoch it evaluates, plus the warm-up: under `eval.every: 2`
(`thesis_trial_minutes_every_2`, 50 evaluations) and under spaces/thesis-hmdb51.yaml's
`eval.every: rungs` (`thesis_trial_minutes`: ASHA's rungs 10, 30, 90 and the last epoch, for a
trial ASHA keeps to the end). With `--per-process K` (default 4 on CUDA, 2 on a CPU) it measures K
trials side by side in one process (`resources.trials_per_process`, train/slots.py): their
aggregate training clips/s in the steady window (from the last slot's end of epoch 2 to the first
slot's end of epoch E-1, `--shared-epochs`, at least 5), and K evaluations at once, each thread
on its own CUDA stream, against one trial in the same run; a shared trial's minutes are the
trial's training and evaluation minutes divided by those gains, plus its own warm-up. The last
lines are

    end_to_end_vs_step: <loop clips/s / bare step clips/s>x
    thesis_trial_minutes: <N>
    shared_thesis_trial_minutes: <N>   (minutes per trial when K trials share a process)

    python benchmarks/thesis_trial.py      # as the trainer runs (CUDA graph); --eager without
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mtsearch.config import TrialConfig, flatten_keys
from mtsearch.yamlio import read_yaml

HMDB51_TRAIN_CLIPS = 3_570  # split 1: one clip per training video per epoch
HMDB51_EVAL_CLIPS = 11_200  # split 1: 1,530 test videos in non-overlapping 13-frame clips
THESIS_EPOCHS = 100
SPACE = Path(__file__).resolve().parent.parent / "spaces" / "thesis-hmdb51.yaml"


def evaluated_epochs(every: int | str | None = None) -> list[int]:
    """The epochs a full search trial of SPACE evaluates: under its own `eval.every` (None), or
    under `every` (`rungs`: its scheduler's milestones and the last epoch)."""
    from mtsearch.space import space_from_mapping

    data = dict(read_yaml(SPACE) or {})
    base = flatten_keys(data.get("base") or {}, SPACE)
    if every is not None:
        base["eval.every"] = every
    spec = space_from_mapping({**data, "base": base}, str(SPACE), "search")
    return [e for e in range(1, spec.max_epochs + 1) if spec.base.evaluates(e)]


def measure_eval(
    cfg: TrialConfig, device: torch.device, rounds: int = 2
) -> tuple[float, float, int, float]:
    """(evaluation clips/s, its loader alone clips/s, clips, warm-up s) of `evaluate` on cfg's
    test clips; the first round warms up (compiles where the trainer would). The loader alone
    says whether evaluation waits for data."""
    from mtsearch.data.clips import make_loader
    from mtsearch.train import build_training, configure_torch, evaluate, load_clips, loader_workers

    configure_torch(device, cfg.threads)
    _, _, test_set, num_classes = load_clips(cfg, print)
    model = build_training(cfg, num_classes, device, print).model
    loader = make_loader(test_set, cfg.eval_batch_size, False, loader_workers(cfg, device), device, 0)
    best = loader_only = 0.0
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        evaluate(model, loader, cfg, device)  # ends with a host read: the work is done
        times.append(time.perf_counter() - start)
        best = max(best, len(test_set) / times[-1])
        start = time.perf_counter()
        for clips, _, _ in loader:
            clips.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        loader_only = max(loader_only, len(test_set) / (time.perf_counter() - start))
    return best, loader_only, len(test_set), max(0.0, times[0] - len(test_set) / best)


def main() -> None:
    from train_step import measure, measure_loop, synthetic_root, trial_config

    from mtsearch.train import compile_wanted

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--eager", action="store_true", help="CUDA: run the step eagerly (default: a CUDA graph)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="training clips per step (thesis: 4)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the measured loop")
    parser.add_argument("--videos", type=int, help="synthetic videos per class (default 40; CPU 4)")
    parser.add_argument("--steps", type=int, help="timed bare steps per block (default 20; CPU 3)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--data", help="synthetic set to use: reused if there, else written")
    parser.add_argument("--per-process", type=int,
                        help="trials per process for the last line (default 4; CPU 2; 1: skip)")
    parser.add_argument("--shared-epochs", type=int, default=5,
                        help="epochs of each shared run (at least 5: the steady window is epochs 3..E-1)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset, mask = ("thesis" if cuda else "tiny"), "cls+track+dir"
    graph = TrialConfig().cuda_graph and not args.eager  # the trainer's default
    precision = ("bf16g" if graph else "bf16") if cuda else "fp32"
    if cuda:
        where = f"{torch.cuda.get_device_name(device)}, thesis geometry, {precision}"
    else:
        where = "CPU (no GPU here): the tiny geometry stands in for the thesis one"
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; {mask}")
    if args.threads:
        torch.set_num_threads(args.threads)

    bare = measure(preset, mask, device, precision, args.batch_size, 5, args.steps or (20 if cuda else 3))
    print(f"bare step:  {bare.clips_per_s:8.2f} clips/s ({bare.step_s * 1e3:.1f} ms/step)", flush=True)

    root = synthetic_root(args.videos or (40 if cuda else 4), args.data)
    loop_cps, wait, history = measure_loop(
        preset, mask, device, precision, args.batch_size, root, args.epochs, args.threads
    )
    per_epoch = ", ".join(f"{row['clips_per_s']:.1f}" for row in history)
    print(f"train loop: {loop_cps:8.2f} clips/s (epochs: {per_epoch}); data_wait {wait:.2f}", flush=True)

    cfg = trial_config(
        preset, mask, precision,
        **{"data.root": str(root), "data.cache_dir": str(root.parent / "cache"),
           "optim.batch_size": args.batch_size, "device": device.type, "threads": args.threads},
    )
    eval_cps, loader_cps, eval_clips, eval_warmup_s = measure_eval(cfg, device)
    print(f"evaluation: {eval_cps:8.2f} clips/s ({eval_clips} clips, batch {cfg.eval_batch_size}); "
          f"its loader alone {loader_cps:.2f} clips/s")
    # epoch 1 (no evaluation) took t1 for clips = t1 * its clips/s; at the steady speed it would
    # have taken clips / loop_cps: the difference is the one-off warm-up
    first = history[0]
    train_warmup_s = max(0.0, first["epoch_s"] * (1 - first["clips_per_s"] / loop_cps))
    warmup_min = (train_warmup_s + eval_warmup_s) / 60
    compiled = compile_wanted(cfg, device)
    print(f"warm-up: {train_warmup_s:.1f} s training + {eval_warmup_s:.1f} s evaluation, once per "
          f"trial ({'torch.compile, ' if compiled else ''}cuDNN autotuning, graph capture, workers)")

    train_min = THESIS_EPOCHS * HMDB51_TRAIN_CLIPS / loop_cps / 60
    minutes = {}
    for every in (2, "rungs"):  # today's eval.every: 2 and a scheduler's milestones
        at = evaluated_epochs(every)
        eval_min = len(at) * HMDB51_EVAL_CLIPS / eval_cps / 60
        minutes[every] = (train_min + eval_min + warmup_min, eval_min)
        shown = ", ".join(map(str, at)) if len(at) <= 8 else f"{at[0]}, {at[1]}, ..., {at[-1]}"
        print(f"projection, eval.every {every}: HMDB-51 split 1, {THESIS_EPOCHS} epochs x {HMDB51_TRAIN_CLIPS} "
              f"clips ({train_min:.1f} min) + {len(at)} evaluations x {HMDB51_EVAL_CLIPS} clips at epochs "
              f"{shown} ({eval_min:.1f} min) + warm-up ({warmup_min:.1f} min)")
    print(f"end_to_end_vs_step: {loop_cps / bare.clips_per_s:.2f}x")
    print(f"thesis_trial_minutes_every_2: {minutes[2][0]:.1f}")
    print(f"thesis_trial_minutes: {minutes['rungs'][0]:.1f} (eval.every: rungs, a trial ASHA keeps to the end)",
          flush=True)
    eval_min = minutes["rungs"][1]
    count = args.per_process or (4 if cuda else 2)
    if count > 1:
        train_gain, eval_gain = measure_shared(cfg, device, count, max(5, args.shared_epochs))
        print(f"shared: {count} trials in one process: training {train_gain:.2f}x and evaluation "
              f"{eval_gain:.2f}x the clips/s of one trial")
        print(f"shared_thesis_trial_minutes: {train_min / train_gain + eval_min / eval_gain + warmup_min:.1f}")


def measure_shared(cfg: TrialConfig, device: torch.device, count: int, epochs: int) -> tuple[float, float]:
    """(training gain, evaluation gain) of `count` trials side by side in one process over one
    trial, both measured here: training as the aggregate clips/s of the steady window
    (`fit_side_by_side`, no evaluation), evaluation as `count` evaluations on their own threads
    at once, each on a CUDA stream of its own (`StreamPool`, as slots get them)."""
    def training_rate(count: int) -> float:
        from shared_process import timed_shared_epochs

        cfgs = [cfg.with_overrides({"seed": k, "optim.epochs": epochs, "eval.every": 10_000,
                                    "optim.lr": 2e-4 * (1 + k / 4)}, "<bench>") for k in range(count)]
        clips, seconds = timed_shared_epochs(cfgs, _clips_per_epoch(cfg), device)
        return sum(clips) / seconds

    def evaluation_rate(count: int) -> float:
        from concurrent.futures import ThreadPoolExecutor

        from mtsearch.data.clips import make_loader
        from mtsearch.train import build_training, evaluate, load_clips, loader_workers
        from mtsearch.train.slots import StreamPool

        _, _, test_set, num_classes = load_clips(cfg, print)
        models = [build_training(cfg, num_classes, device, print).model for _ in range(count)]
        loaders = [make_loader(test_set, cfg.eval_batch_size, False, loader_workers(cfg, device), device, 0)
                   for _ in range(count)]
        share = max(1, threads // count)  # each slot its share of the cores, as fit_side_by_side gives
        pool = StreamPool()
        streams = [pool.acquire(str(k), device) if device.type == "cuda" else None for k in range(count)]

        def one(k: int) -> None:
            torch.set_num_threads(share)
            with torch.cuda.stream(streams[k]) if streams[k] is not None else nullcontext():
                evaluate(models[k], loaders[k], cfg, device)
                if streams[k] is not None:
                    streams[k].synchronize()

        with ThreadPoolExecutor(count) as pool:
            list(pool.map(one, range(count)))  # warm-up (and compilation where the trainer compiles)
            start = time.perf_counter()
            list(pool.map(one, range(count)))
        return count * len(test_set) / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    one_train, one_eval = training_rate(1), evaluation_rate(1)
    train_gain, eval_gain = training_rate(count) / one_train, evaluation_rate(count) / one_eval
    torch.set_num_threads(threads)
    return train_gain, eval_gain


def _clips_per_epoch(cfg: TrialConfig) -> int:
    """Training clips of one epoch (make_loader drops a lone last clip)."""
    from mtsearch.train import load_clips

    count = len(load_clips(cfg, lambda message: None)[0])
    return count - (count % cfg.optim.batch_size == 1)


if __name__ == "__main__":
    main()
