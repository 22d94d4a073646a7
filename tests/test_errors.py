"""Project exceptions survive pickling (Ray ships a trial's exception to the driver)."""

from __future__ import annotations

import pickle

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


def test_an_exception_raised_in_a_ray_worker_keeps_its_message() -> None:
    ray = pytest.importorskip("ray")

    @ray.remote
    def trial() -> None:
        raise InvalidInput(None, "data.fps", "240 is above the source rate of every video", 240)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(Exception) as caught:
            ray.get(trial.remote())
    finally:
        ray.shutdown()
    assert "data.fps: 240 is above the source rate of every video (got 240)" in str(caught.value)
    assert isinstance(caught.value, InvalidInput)
