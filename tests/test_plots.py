"""plots.py: every figure is a valid PNG of the expected size, with real content (several colours)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_report import TWO_BY_TWO, write_grid_study, write_search_study

from mtsearch.results import figures, parallel_plot, plots, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_real_figure(path: Path, size_inches: tuple[float, float]) -> None:
    import matplotlib.image as mpimg

    width, height = png_size(path)
    assert (width, height) == (round(size_inches[0] * figures.DPI), round(size_inches[1] * figures.DPI))
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (height, width)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 10, f"{path.name} has {len(colours)} colours"


def test_grid_study_figures(tmp_path: Path) -> None:
    study = report.load_study(write_grid_study(tmp_path, TWO_BY_TWO))
    paths = plots.make_plots(study, tmp_path / "out")
    assert [p.name for p in paths] == ["learning_curves.png", "ablation_bars.png"]
    assert_real_figure(paths[0], (12, 4.8))
    assert_real_figure(paths[1], (12, 5.2))  # bars + paired-delta panel


def test_search_study_figures(tmp_path: Path) -> None:
    study = report.load_study(write_search_study(tmp_path, optuna_db=False))
    paths = plots.make_plots(study, tmp_path / "out")
    assert [p.name for p in paths] == [
        "learning_curves.png",
        "weights_scatter.png",
        "parallel_coordinates.png",
    ]
    assert_real_figure(paths[1], (7.5, 6))
    assert_real_figure(paths[2], (8, 5.5))  # 3 axes: 2 keys + the metric
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_study_without_epochs_skips_curves_with_a_warning(tmp_path: Path) -> None:
    folder = write_search_study(tmp_path, optuna_db=False)
    (folder / "epochs.parquet").unlink()
    warnings: list[str] = []
    paths = plots.make_plots(report.load_study(folder), tmp_path / "out", warn=warnings.append)
    assert [p.name for p in paths] == [
        "weights_scatter.png",
        "parallel_coordinates.png",
    ]  # best_* columns
    assert warnings and "no epochs" in warnings[0]


@pytest.mark.parametrize(
    "values, expected",
    [
        (["cls", "cls+track+dir", "cls+track", "cls"], [0.0, 1.0, 0.5, 0.0]),
        ([1.0, 10.0, 100.0], [0.0, 0.5, 1.0]),  # log: spans > 30x
        ([2, 3, 4], [0.0, 0.5, 1.0]),
    ],
)
def test_parallel_axis_positions(tmp_path: Path, values: list, expected: list[float]) -> None:
    study = report.load_study(write_search_study(tmp_path, optuna_db=False))
    positions, ticks = parallel_plot._axis_positions(study, "some.key", values)
    assert positions == pytest.approx(expected)
    assert ticks
    if isinstance(values[0], float):  # a log axis: the ends and the decades between, no made-up midpoint
        assert sorted(text for _, text in ticks) == ["1", "10", "100"]


def test_parallel_ticks_are_round_values_of_the_axis(tmp_path: Path) -> None:
    study = report.load_study(write_search_study(tmp_path, optuna_db=False))
    _, ticks = parallel_plot._axis_positions(study, "some.key", [0.13, 0.47, 0.71])
    inner = sorted(float(text) for at, text in ticks if 0 < at < 1)
    assert inner == [0.2, 0.4, 0.6]  # round steps strictly inside the range, 1-2-5 spaced
    for at, text in ticks:
        assert at == pytest.approx((float(text) - 0.13) / (0.71 - 0.13), abs=1e-2)
