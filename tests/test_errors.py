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


# ---- bad input through the CLI: one `error:` line naming the file and key, exit 2, nothing made ----

S = "space: {loss.w_dir: {uniform: [0, 1]}}\n"  # a valid search space, for cases that break the rest
G = "grid: {model.branches: [[cls], [cls, dir]]}\n"  # a valid grid
MISSING, FOLDER = object(), object()

# (id, command, file content, extra options, what the line must name after `error: <file>: `,
#  or after `error: ` for an option, which names no file)
BAD_FILES = [
    ("yaml-syntax", "run", "space: {loss.w_dir: {uniform: [0, 1}\n", [], "invalid YAML: line 1"),
    ("yaml-tab", "run", "name: x\n\tspace: 1\n", [], "invalid YAML: line 2"),
    ("two-documents", "run", S + "---\n" + S, [], "invalid YAML"),
    ("top-level-list", "run", "- a\n- b\n", [], "expected a mapping"),
    ("top-level-scalar", "ablate", "42\n", [], "expected a mapping"),
    ("empty-file", "run", "", [], "expected a mapping"),
    ("only-comments", "ablate", "# nothing yet\n", [], "expected a mapping"),
    ("binary", "run", bytes(range(256)) * 4, [], "not a UTF-8 text file"),
    ("latin-1", "run", "name: caf\xe9\n".encode("latin-1") + S.encode(), [], "not a UTF-8 text file"),
    ("a-folder", "run", FOLDER, [], "is a folder"),
    ("missing", "ablate", MISSING, [], "file not found"),
    ("list-as-key", "run", "? [a, b]\n: 1\n" + S, [], "invalid YAML: line 1"),
    ("impossible-date", "run", "name: 2024-13-45\n" + S, [], "invalid YAML: month must be in 1..12"),
    ("nested-too-deeply", "run", "a: " + "[" * 5000 + "]" * 5000 + "\n" + S, [], "invalid YAML"),
    ("python-tag", "run", "name: !!python/name:os.system\n" + S, [], "invalid YAML"),
    *[(f"{section}-as-{kind}", command, (S if command == "run" else G) + f"{section}: {value}\n", [],
       f"{section}: expected a mapping")
      for section in ("search", "scheduler", "resources", "failure", "storage")
      for command, kind, value in (("run", "list", "[1, 2]"), ("ablate", "scalar", "5"))],
    ("base-as-list", "run", S + "base: [1, 2]\n", [], "base: expected a mapping"),
    ("space-as-list", "run", "space: [1, 2]\n", [], "space: expected a mapping"),
    ("space-empty", "run", "space:\n", [], "space: needs at least one searched key"),
    ("grid-as-list", "ablate", "grid: [1, 2]\n", [], "grid: needs at least one factor"),
    ("reference-as-list", "ablate", G + "reference: [cls]\n", [], "reference: expected a mapping"),
    ("unknown-top-key", "run", S + "serach: {}\n", [], "serach: unknown key; did you mean 'search'?"),
    *[(f"unknown-{section}-key", "run", S + f"{section}: {{bogus: 1}}\n", [], f"{section}.bogus: unknown key")
      for section in ("search", "scheduler", "resources", "failure", "storage")],
    # the key's earlier name: one line naming today's (a study recorded with it still reads: test_eras)
    *[(f"renamed-fuse-{command}", command, content + "resources: {fuse: 2}\n", [],
       "resources.fuse: is now called resources.trials_per_process (same values): rename it")
      for command, content in (("run", S), ("ablate", G))],
    ("unknown-base-key", "run", S + "base: {optim.lrr: 1}\n", [], "base.optim.lrr: unknown config key"),
    ("unknown-base-section", "run", S + "base: {optimm: {lr: 1}}\n", [],
     "base.optimm: unknown key; did you mean 'optim'?"),
    ("base-section-as-scalar", "run", S + "base: {optim: 5}\n", [], "base.optim: expected a mapping"),
    ("unknown-space-key", "run", "space: {loss: {w_trak: {uniform: [0, 1]}}}\n", [], "space.loss.w_trak: unknown"),
    ("distribution-extra-key", "run", "space: {loss.w_dir: {uniform: [0, 1], bogus: 1}}\n", [],
     "space.loss.w_dir: expected one distribution"),
    ("unknown-grid-key", "ablate", "grid: {loss.w_trak: [1, 2]}\n", [], "grid.loss.w_trak: unknown config key"),
    ("unknown-reference-key", "ablate", G + "reference: {bogus: 1}\n", [], "reference.bogus: not a grid factor"),
    ("loguniform-from-0", "run", "space: {loss.w_dir: {loguniform: [0, 1]}}\n", [],
     "space.loss.w_dir: loguniform needs low > 0"),
    ("bounds-reversed", "run", "space: {loss.w_track: {loguniform: [5, 1]}}\n", [],
     "space.loss.w_track: loguniform needs two numbers low < high"),
    ("one-bound", "run", "space: {loss.w_dir: {uniform: [1]}}\n", [], "space.loss.w_dir: uniform needs two numbers"),
    ("text-bounds", "run", "space: {loss.w_dir: {uniform: [a, b]}}\n", [], "space.loss.w_dir: uniform needs"),
    ("nan-bound", "run", "space: {loss.w_dir: {uniform: [.nan, 1]}}\n", [], "space.loss.w_dir: uniform needs"),
    ("empty-choice", "run", "space: {data.fps: {choice: []}}\n", [], "space.data.fps: choice needs a non-empty list"),
    ("fractional-int", "run", "space: {track.frame_gap: {int: [1.5, 3]}}\n", [],
     "space.track.frame_gap: int needs two integers"),
    ("logint-from-0", "run", "space: {track.frame_gap: {logint: [0, 4]}}\n", [], "space.track.frame_gap: logint"),
    ("branches-as-numbers", "run", "space: {model.branches: {choice: [1, 2]}}\n", [],
     "space.model.branches: expected a list of branch names"),
    ("searched-split", "run", "space: {data.split: {choice: [1, 2]}}\n", [], "space.data.split: is study-wide"),
    ("grid-of-selection", "ablate", "grid: {data.selection: [val, test]}\n", [],
     "grid.data.selection: is study-wide"),
    ("test-metric", "run", S + "metric: test_hit1\n", [], "metric: the test split is reported, never optimised"),
    ("tied-length-mismatch", "ablate", "grid:\n  loss.w_track,loss.w_dir: [[25, 2], [50]]\n", [],
     "grid.loss.w_track,loss.w_dir: each level must list 2 values"),
    ("tied-scalar-levels", "ablate", "grid:\n  loss.w_track,loss.w_dir: [25, 50]\n", [],
     "grid.loss.w_track,loss.w_dir: each level must list 2 values"),
    ("tied-empty-key", "ablate", "grid:\n  'loss.w_track,': [[25]]\n", [], "grid.loss.w_track,: an empty key"),
    ("reference-not-a-cell", "ablate", G + "reference: {model.branches: [cls, track]}\n", [],
     "reference.model.branches: not one of the grid's values"),
    ("reference-not-a-tied-level", "ablate",
     "grid:\n  loss.w_track,loss.w_dir: [[25, 2]]\nreference: {loss.w_track: 25, loss.w_dir: 8}\n", [],
     "reference: (loss.w_track, loss.w_dir) is not one of the grid's levels"),
    ("reference-branches-number", "ablate", G + "reference: {model.branches: 5}\n", [],
     "reference.model.branches: expected a list of branch names"),
    ("repeats-0", "ablate", G + "repeats: 0\n", [], "repeats: must be >= 1"),
    ("repeats-text", "ablate", G + "repeats: three\n", [], "repeats: expected an integer"),
    ("name-with-slash", "ablate", G + "name: a/b\n", [], "name: must be a simple folder name"),
    ("name-empty", "run", S + "name: ''\n", [], "name: must be a simple folder name"),
    ("name-dot-dot", "run", S + "name: '..'\n", [], "name: must be a simple folder name"),
    ("cli-negative-num-samples", "run", S, ["--num-samples", "-1"], "--num-samples: must be >= 1"),
    ("cli-max-concurrent-0", "run", S, ["--max-concurrent", "0"], "--max-concurrent: must be >= 1"),
    ("cli-repeats-0", "ablate", G, ["--repeats", "0"], "--repeats: must be >= 1"),
    ("cli-name-dot-dot", "run", S, ["--name", ".."], "--name: must be a simple folder name"),
    ("cli-connect-timeout-0", "ablate", G, ["--connect-timeout", "0"], "argument --connect-timeout"),
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refused_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command,content,extra,expected", [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_a_bad_space_or_grid_file_is_one_error_line(tmp_path, command, content, extra, expected) -> None:
    path = tmp_path / "bad.yaml"
    if content is FOLDER:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not MISSING:
        path.write_text(content)
    trials = tmp_path / "trials"
    # an input that validation let through would stop at this empty port (a line naming --address)
    guard = [] if "--connect-timeout" in extra else ["--address", f"127.0.0.1:{_free_port()}", "--connect-timeout", "1"]
    line = _refused_line(_cli(tmp_path, command, str(path), "--trials-dir", str(trials), "--quiet", *extra, *guard))
    prefix = "error: " if expected.startswith(("--", "argument")) else f"error: {path}: "
    assert line.startswith(prefix) and expected in line, line
    assert not trials.exists()


BAD_CONFIRMS = [
    ("top-0", ["--top", "0"], "error: --top: a race needs at least 2 configurations (got 0)"),
    ("seeds-1", ["--seeds", "1"], "error: --seeds: a paired test needs at least 2 seeds (got 1)"),
    ("seeds-below-first-test", ["--seeds", "3"],
     "error: --seeds: below --first-test 5: the race would never test, so it could drop nothing"),
    ("alpha-1.5", ["--alpha", "1.5"], "error: --alpha: must be between 0 and 1 (got 1.5)"),
    ("connect-timeout-0", ["--connect-timeout", "0"], "argument --connect-timeout: must be a positive number"),
    ("not-a-study", ["FOLDER"], "trials.parquet: not found: this folder holds no study results yet"),
    ("missing-folder", ["MISSING"], "no such study folder"),
]


@pytest.mark.parametrize("extra,expected", [case[1:] for case in BAD_CONFIRMS], ids=[case[0] for case in BAD_CONFIRMS])
def test_bad_confirm_options_are_one_error_line(tmp_path, extra, expected) -> None:
    """Checked before Ray starts (and quickly): nothing is created, not even `confirm/`."""
    import time

    folder = tmp_path / "study"
    folder.mkdir()
    study = {"FOLDER": folder, "MISSING": tmp_path / "nowhere"}.get(extra[0], folder)
    extra = [e for e in extra if e not in ("FOLDER", "MISSING")]
    start = time.monotonic()
    result = _cli(tmp_path, "confirm", str(study), *extra, "--address", f"127.0.0.1:{_free_port()}",
                  "--connect-timeout", "1")
    line = _refused_line(result)
    assert expected in line, line
    assert [p.name for p in tmp_path.rglob("*")] == ["study"] and not any(folder.iterdir())
    assert time.monotonic() - start < 60  # no Ray, no waiting on the address
