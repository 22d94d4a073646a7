"""Trials per GPU (issue 10): packing arithmetic, shapes, per-config shares on a Ray with logical
GPUs, and out-of-memory retries with a larger share.

Ray counts logical GPUs without any device, so a head started with `--num-gpus=2` on this CPU
machine schedules real fractional reservations; the trials (stand-in trainers) run on the CPU
and record what Ray assigned them. The memory probe needs a GPU: here it is given figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from ray_head import ray_head

from mtsearch.config import TrialConfig
from mtsearch.errors import GpuOutOfMemory, is_out_of_memory
from mtsearch.search.driver import run_search
from mtsearch.search.packing import (
    MemoryProbe,
    TrialResources,
    larger_share,
    load_probes,
    measure_step_memory,
    plan,
    save_probes,
    shape_label,
    spec_shapes,
)
from mtsearch.space import space_from_mapping

H200 = 139.8  # GiB, as torch reports an H200


def _spec(data: dict[str, Any], kind: str = "search") -> Any:
    return space_from_mapping(data, "test.yaml", kind, default_name="study")


# ---- arithmetic ------------------------------------------------------------------------------

def test_memory_decides_unless_cpus_or_the_cap_say_fewer():
    thesis = MemoryProbe(5.5, H200, "NVIDIA H200")
    # 5.5 GiB + 15% + 0.75 GiB of context = 7.08 GiB -> 19 fit; 16 CPUs at 2 per trial -> 8
    packing = plan(thesis, "thesis b4", cpus_per_gpu=16, cpus_per_trial=2, max_per_gpu=16)
    assert (packing.by_memory, packing.trials_per_gpu, packing.share) == (19, 8, 0.125)
    assert packing.message() == "thesis b4: 5.5 GiB -> 19 trials per NVIDIA H200 (capped by 16 CPUs: 8)"
    capped = plan(MemoryProbe(0.9, H200, "NVIDIA H200"), "small b4", 16, 1, max_per_gpu=8)
    assert (capped.trials_per_gpu, capped.share, capped.limit) == (8, 0.125, "max_trials_per_gpu")
    big = plan(MemoryProbe(30.0, 80.0, "NVIDIA H100"), "thesis b32", 16, 1, 8)
    assert (big.trials_per_gpu, big.share, big.limit) == (2, 0.5, "")
    assert big.message() == "thesis b32: 30.0 GiB -> 2 trials per NVIDIA H100"
    third = plan(MemoryProbe(20.0, 80.0, "NVIDIA H100"), "x", 16, 1, 8)
    assert (third.trials_per_gpu, third.share) == (3, 0.3333)  # Ray's 1e-4 resolution, rounded down
    too_big = plan(MemoryProbe(90.0, 80.0, "NVIDIA H100"), "thesis b64", 16, 1, 8)
    assert (too_big.trials_per_gpu, too_big.share) == (1, 1.0)
    assert "more than one NVIDIA H100 holds" in too_big.message()


def test_an_out_of_memory_retry_halves_the_neighbours_up_to_a_whole_gpu():
    assert [larger_share(s) for s in (0.125, 0.25, 0.3333, 0.5, 1.0)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_shapes_are_what_changes_tensors_not_the_loss_weights():
    spec = _spec({"base": {"optim.epochs": 2},
                  "space": {"model.preset": {"choice": ["tiny", "small"]},
                            "optim.batch_size": {"int": [2, 6]},
                            "loss.w_track": {"loguniform": [1, 100]},
                            "track.frame_gap": {"choice": [2, 3]}}})
    shapes = spec_shapes(spec)
    assert sorted(shape_label(cfg) for cfg in shapes.values()) == ["small b6", "tiny b6"]
    resources = TrialResources(1.0, 0.0, {key: 0.5 if cfg.model.preset == "small" else 0.25
                                          for key, cfg in shapes.items()}, spec)
    # a batch inside the range takes the share measured at its top
    assert resources.share({"model.preset": "tiny", "optim.batch_size": 3, "loss.w_track": 7.0,
                            "track.frame_gap": 3}) == 0.25
    assert resources.share({"model.preset": "small", "optim.batch_size": 6, "loss.w_track": 2.0,
                            "track.frame_gap": 2}) == 0.5
    assert resources({"model.preset": "small", "optim.batch_size": 2, "loss.w_track": 2.0,
                      "track.frame_gap": 2}).required_resources == {"CPU": 1.0, "GPU": 0.5}


def test_labels_name_what_departs_from_the_preset():
    cfg = TrialConfig.from_mapping({"model.preset": "thesis", "data.crop": 224, "model.branches": ["cls", "dir"]})
    assert shape_label(cfg) == "thesis b4 crop 224 cls+dir"


def test_probes_survive_in_the_study_folder_and_a_damaged_file_is_measured_again(tmp_path: Path):
    save_probes(tmp_path, {"tiny b4": MemoryProbe(0.4, 80.0, "NVIDIA H100")})
    assert load_probes(tmp_path) == {"tiny b4": MemoryProbe(0.4, 80.0, "NVIDIA H100")}
    (tmp_path / "gpu_memory.json").write_text("{not json")
    assert load_probes(tmp_path) == {}


def test_the_probe_runs_the_trainers_step_and_says_when_no_gpu_is_visible(one_torch_thread):
    tiny = TrialConfig.from_mapping({"model.preset": "tiny", "optim.batch_size": 2})
    assert measure_step_memory(tiny) is None  # no CUDA device here
    probe = measure_step_memory(tiny, "cpu")  # the same run on the CPU: peak RSS
    assert probe is not None and probe.gpu == "cpu" and 0.1 < probe.peak_gib < probe.total_gib


def test_out_of_memory_is_recognised_and_keeps_its_message_across_pickling():
    import pickle

    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    err = pickle.loads(pickle.dumps(GpuOutOfMemory(0.25, "CUDA out of memory")))
    assert str(err) == "out of GPU memory at a GPU share of 0.25: CUDA out of memory"


# ---- on a Ray with two logical GPUs ------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_ray() -> Iterator[str]:
    with ray_head(num_cpus=4, num_gpus=2) as address:
        yield address


def make_fit(log_dir: Path, oom_epoch: int | None = None) -> Callable[..., Any]:
    """A stand-in trainer that records the GPU share Ray assigned it; with `oom_epoch`, its first
    attempt runs out of GPU memory there (as torch raises it), after checkpointing the epoch before."""
    log_dir = str(log_dir)

    def fake_fit(cfg: Any, out_dir: Any, *, on_epoch: Any, resume: bool, log: Any) -> Any:
        import json as _json
        import os as _os
        import time as _time
        from pathlib import Path as _Path
        from types import SimpleNamespace

        import ray as _ray
        import torch as _torch

        share = _ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        ckpt = _Path(out_dir) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        start = 1
        if resume and (ckpt / "state.json").exists():
            start = _json.loads((ckpt / "state.json").read_text())["epoch"] + 1
        record = {"preset": cfg.model.preset, "share": share, "start": start, "pid": _os.getpid()}
        (_Path(log_dir) / f"{_time.time_ns()}.json").write_text(_json.dumps(record))
        marker = _Path(log_dir) / f"oom-{cfg.model.preset}"
        for epoch in range(start, cfg.optim.epochs + 1):
            if oom_epoch == epoch and not marker.exists():
                marker.write_text("")
                raise _torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            _time.sleep(0.1)
            (ckpt / "state.json").write_text(_json.dumps({"epoch": epoch}))
            on_epoch({"epoch": epoch, "loss": 1.0 / epoch, "loss_cls": 0.5, "loss_track": None,
                      "loss_dir": None, "train_hit1": 0.1 * epoch, "val_hit1": 0.1 * epoch,
                      "val_hit5": 0.2, "dir_acc": None, "lr": 1e-3, "epoch_s": 0.1, "clips_per_s": 1.0,
                      "device": "cpu"}, ckpt)
        return SimpleNamespace(status="completed", error=None)

    return fake_fit


def _records(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def _grid(name: str, resources: dict[str, Any], presets: list[str], failure: int = 0) -> Any:
    return _spec({"name": name, "base": {"optim.epochs": 3, "eval.every": 1},
                  "grid": {"model.preset": presets}, "resources": resources,
                  "failure": {"max_failures": failure}}, kind="ablation")


def test_auto_gives_each_config_the_share_of_its_shape(tmp_path: Path, gpu_ray: str):
    probed: list[str] = []

    def probe(cfg: TrialConfig) -> MemoryProbe:
        probed.append(shape_label(cfg))
        return MemoryProbe({"tiny": 3.0, "small": 10.0}[cfg.model.preset], 40.0, "Test GPU")

    said: list[str] = []
    spec = _grid("auto", {"cpus_per_trial": 0.5}, ["tiny", "small"])  # gpus_per_trial: auto
    outcome = run_search(spec, tmp_path / "trials", address=gpu_ray, memory_probe=probe, log=said.append,
                         trainer=make_fit(tmp_path))
    assert sorted(probed) == ["small b4", "tiny b4"]
    # tiny: 4.2 GiB with margins -> 9 fit, 2 CPUs per GPU at 0.5 -> 4; small: 12.25 GiB -> 3
    assert said[0].startswith("joining the Ray cluster")  # with --address; else it is the first line
    assert said[1] == ("tiny b4: 3.0 GiB -> 9 trials per Test GPU (capped by 2 CPUs: 4); "
                       "small b4: 10.0 GiB -> 3 trials per Test GPU")
    rows = {json.loads(r["config"])["model"]["preset"]: r
            for r in pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()}
    assert {p: r["gpu_share"] for p, r in rows.items()} == {"tiny": 0.25, "small": 0.3333}
    assert {r["preset"]: r["share"] for r in _records(tmp_path)} == {"tiny": 0.25, "small": 0.3333}
    # a resumed study keeps the measured figures: nothing is probed again
    assert json.loads((outcome.study_dir / "gpu_memory.json").read_text())["tiny b4"]["peak_gib"] == 3.0


def test_out_of_memory_is_retried_with_a_larger_share_and_not_counted(tmp_path: Path, gpu_ray: str):
    spec = _grid("oom", {"cpus_per_trial": 1, "gpus_per_trial": 0.25}, ["tiny"])  # max_failures 0
    said: list[str] = []
    outcome = run_search(spec, tmp_path / "trials", address=gpu_ray, log=said.append,
                         trainer=make_fit(tmp_path, oom_epoch=2))
    (row,) = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert (row["status"], row["error"], row["gpu_share"], row["epochs_done"]) == ("completed", None, 0.5, 3)
    first, retry = _records(tmp_path)
    assert (first["share"], first["start"]) == (0.25, 1)
    assert (retry["share"], retry["start"]) == (0.5, 2)  # from its last checkpoint, with fewer neighbours
    epochs = pq.read_table(outcome.study_dir / "epochs.parquet").to_pylist()
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert any("out of GPU memory; retrying from its last checkpoint with a GPU share of 0.5" in s
               for s in said)


def test_out_of_memory_at_a_whole_gpu_is_an_error(tmp_path: Path, gpu_ray: str):
    spec = _grid("oomfull", {"cpus_per_trial": 1, "gpus_per_trial": 1}, ["tiny"])
    outcome = run_search(spec, tmp_path / "trials", address=gpu_ray, trainer=make_fit(tmp_path, 2))
    (row,) = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert row["status"] == "error" and "out of GPU memory at a GPU share of 1" in row["error"]
    assert len(_records(tmp_path)) == 1  # not retried: max_failures is 0


def test_the_live_display_says_how_many_trials_share_a_gpu():
    from mtsearch.cli.run import _gpu_line

    rows = [{"status": "running", "gpu_share": 0.25}, {"status": "running", "gpu_share": 0.5},
            {"status": "completed", "gpu_share": 0.125}, {"status": "running", "gpu_share": 0.0}]
    assert _gpu_line(rows) == "on GPUs: 2 running, up to 4 per GPU"
    assert _gpu_line([{"status": "running", "gpu_share": 0.0}]) == ""
