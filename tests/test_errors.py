"""Project exceptions survive pickling (Ray ships a trial's exception to the driver)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from mtsearch.errors import InvalidInput, VideoReadError


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("space.yaml", "data.fps", "above every video's frame rate", 240),
        InvalidInput(None, "device", "CUDA is not available on this machine", "cuda"),
        InvalidInput("/data/hmdb51", None, "dataset folder not found"),
        VideoReadError("/data/x.avi", "no video stream"),
    ],
)
def test_project_exceptions_pickle_with_their_message(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)


RAY_SCRIPT = """
import ray
from mtsearch.errors import InvalidInput

@ray.remote
def trial():
    raise InvalidInput(None, "data.fps", "240 is above the source rate of every video", 240)

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
try:
    ray.get(trial.remote())
except InvalidInput as exc:
    print("caught:", str(exc).strip().splitlines()[-1])  # the line trials.parquet records
finally:
    ray.shutdown()
"""


def test_an_exception_raised_in_a_ray_worker_keeps_its_message() -> None:
    """A real Ray worker, in its own process (a Ray session in pytest's would leak into others)."""
    result = subprocess.run([sys.executable, "-c", RAY_SCRIPT], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    expected = "InvalidInput: data.fps: 240 is above the source rate of every video (got 240)"
    assert f"caught: mtsearch.errors.{expected}" in result.stdout, result.stdout
