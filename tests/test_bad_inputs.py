"""Bad input to the commands other than the search: each is refused through the real CLI
(`python -m mtsearch`) with exit 2, one `error:` line naming the option or key, no traceback,
and nothing created (issue 19).

The cases run as subprocesses, several at a time, in one module fixture (each takes a second or
three, most of it Python start-up); every case then asserts on its own result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_report import write_search_study


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # fixture root -> arguments after `mtsearch`; outputs are
    # relative (to the case's own folder) so that what a case creates is told apart
    needle: str  # the option, key or file the error line must name


def _f(root: Path, name: str) -> str:
    return str(root / name)


S = "trials/weights"  # a study with 7 ranked trials of 8 (test_report.write_search_study)

CASES = [
    # train: the config file
    Case("train-yaml-syntax", lambda r: ["train", _f(r, "syntax.yaml")], "syntax.yaml: invalid YAML"),
    Case("train-unknown-key", lambda r: ["train", _f(r, "unknown.yaml")], "model.presett: unknown key"),
    Case("train-wrong-type", lambda r: ["train", _f(r, "types.yaml")], "optim.lr"),
    Case("train-fps-above-source", lambda r: ["train", _f(r, "fps.yaml")], "fps.yaml: data.fps"),
    Case("train-missing-data-root", lambda r: ["train", _f(r, "noroot.yaml")], "data.root"),
    Case("train-cuda-without-gpu", lambda r: ["train", _f(r, "cuda.yaml")], "cuda.yaml: device"),
    Case("train-folder-as-config", lambda r: ["train", _f(r, "folder.yaml")], "folder.yaml"),
    Case("train-missing-config", lambda r: ["train", _f(r, "nope.yaml")], "nope.yaml: file not found"),
    Case("train-empty-config", lambda r: ["train", _f(r, "empty.yaml")], "empty.yaml: empty file"),
    Case("train-comments-only", lambda r: ["train", _f(r, "comments.yaml")], "comments.yaml: empty file"),
    Case("train-not-utf8", lambda r: ["train", _f(r, "bytes.yaml")], "bytes.yaml"),
    Case("train-list-config", lambda r: ["train", _f(r, "list.yaml")], "list.yaml"),
    # train: its flags
    Case("train-epochs-0", lambda r: ["train", _f(r, "ok.yaml"), "--epochs", "0"], "--epochs"),
    Case("train-epochs-negative", lambda r: ["train", _f(r, "ok.yaml"), "--epochs", "-1"], "--epochs"),
    Case("train-data-missing", lambda r: ["train", _f(r, "ok.yaml"), "--data", _f(r, "nope")], "--data"),
    Case("train-data-is-file", lambda r: ["train", _f(r, "ok.yaml"), "--data", _f(r, "afile")], "--data"),
    # export
    Case("export-rank-0", lambda r: ["export", _f(r, S), "--rank", "0"], "--rank"),
    Case("export-rank-past-the-end", lambda r: ["export", _f(r, S), "--rank", "8"], "--rank"),
    Case("export-not-a-study", lambda r: ["export", _f(r, "plain")], "plain/trials.parquet"),
    Case("export-nothing-finished", lambda r: ["export", _f(r, "trials/unfinished")], "--rank"),
    Case("export-missing-study", lambda r: ["export", _f(r, "trials/nope")], "trials/nope"),
    Case("export-study-is-file", lambda r: ["export", _f(r, "afile")], "afile"),
    Case("export-no-race", lambda r: ["export", _f(r, S), "--from-confirm"], "--from-confirm"),
    Case("export-out-ends-in-md", lambda r: ["export", _f(r, S), "--out", "x.md"], "--out"),
    # plot, leaderboard, report
    Case("plot-missing-study", lambda r: ["plot", _f(r, "trials/nope")], "trials/nope"),
    Case("plot-not-a-study", lambda r: ["plot", _f(r, "plain")], "plain/trials.parquet"),
    Case("leaderboard-top-0", lambda r: ["leaderboard", _f(r, S), "--top", "0"], "--top"),
    Case("leaderboard-top-negative", lambda r: ["leaderboard", _f(r, S), "--top", "-1"], "--top"),
    Case("leaderboard-bad-format", lambda r: ["leaderboard", _f(r, S), "--format", "xml"], "--format"),
    Case("leaderboard-missing-study", lambda r: ["leaderboard", _f(r, "trials/nope")], "trials/nope"),
    Case("report-not-a-study", lambda r: ["report", _f(r, "plain")], "plain/trials.parquet"),
    Case("report-damaged-parquet", lambda r: ["report", _f(r, "trials/damaged")], "trials.parquet"),
    # data synth
    Case("synth-classes-0", lambda r: ["data", "synth", "s", "--classes", "0"], "--classes"),
    Case("synth-classes-11", lambda r: ["data", "synth", "s", "--classes", "11"], "--classes"),
    Case("synth-videos-per-class-0",
         lambda r: ["data", "synth", "s", "--videos-per-class", "0"], "--videos-per-class"),
    Case("synth-into-foreign-folder", lambda r: ["data", "synth", _f(r, "plain")], "plain"),
    # data check
    Case("check-missing-root", lambda r: ["data", "check", _f(r, "nope")], "data.root"),
    Case("check-root-is-file", lambda r: ["data", "check", _f(r, "afile")], "data.root"),
    Case("check-no-layout", lambda r: ["data", "check", _f(r, "plain")], "data.root"),
    Case("check-hmdb51-wrong-layout",
         lambda r: ["data", "check", "--dataset", "hmdb51", _f(r, "nosplits")], "data.root"),
    Case("check-ucf101-wrong-layout",
         lambda r: ["data", "check", "--dataset", "ucf101", _f(r, "synth")], "data.root"),
    Case("check-damaged-splits", lambda r: ["data", "check", _f(r, "damaged")], "_test_split1.txt"),
    Case("check-fps-0", lambda r: ["data", "check", _f(r, "synth"), "--fps", "0"], "--fps"),
    Case("check-fps-inf", lambda r: ["data", "check", _f(r, "synth"), "--fps", "inf"], "--fps"),
    Case("check-clip-frames-0",
         lambda r: ["data", "check", _f(r, "synth"), "--clip-frames", "0"], "--clip-frames"),
    Case("check-val-fraction-1.5",
         lambda r: ["data", "check", _f(r, "synth"), "--val-fraction", "1.5"], "--val-fraction"),
    Case("check-val-fraction-before-root",
         lambda r: ["data", "check", _f(r, "nope"), "--val-fraction", "2"], "--val-fraction"),
    # model
    Case("model-num-classes-0", lambda r: ["model", "--num-classes", "0"], "--num-classes"),
    Case("model-branches-empty", lambda r: ["model", "--branches", ""], "--branches"),
    Case("model-branches-unknown", lambda r: ["model", "--branches", "cls,foo"], "--branches"),
    Case("model-config-missing", lambda r: ["model", "--config", _f(r, "nope.yaml")], "nope.yaml"),
    Case("model-config-empty", lambda r: ["model", "--config", _f(r, "empty.yaml")], "empty.yaml"),
]


def _listing(root: Path) -> dict[str, int]:
    """Every path under `root` with its size and mtime (a rewritten file counts as a change)."""
    found = {}
    for path in root.rglob("*"):
        stat = path.lstat()
        found[str(path.relative_to(root))] = 0 if path.is_dir() else stat.st_mtime_ns ^ stat.st_size
    return found


def _fixtures(root: Path) -> None:
    """Config files, study folders and datasets the cases point at, all under `root`."""
    import pyarrow.parquet as pq

    from mtsearch.data.synthetic import write_synthetic

    synth = write_synthetic(root / "synth", 2, 2, seed=0)
    configs = {
        "syntax.yaml": "model: {preset: tiny\n",
        "unknown.yaml": "model: {presett: tiny}\n",
        "types.yaml": "optim: {lr: fast}\n",
        "fps.yaml": f"data: {{dataset: synthetic, root: '{synth}', fps: 240}}\nmodel: {{preset: tiny}}\n",
        "noroot.yaml": f"data: {{dataset: hmdb51, root: '{root / 'nope'}'}}\n",
        "cuda.yaml": f"device: cuda\ndata: {{dataset: synthetic, root: '{synth}'}}\n",
        "ok.yaml": f"data: {{dataset: synthetic, root: '{synth}'}}\nmodel: {{preset: tiny}}\n",
        "empty.yaml": "",
        "comments.yaml": "# nothing here yet\n\n",
        "list.yaml": "- model.preset\n- tiny\n",
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    (root / "bytes.yaml").write_bytes(b"model: {preset: \xff\xfe}\n")
    (root / "folder.yaml").mkdir()
    (root / "afile").write_text("not a folder")
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("no study, no dataset")
    write_search_study(root / "trials")
    write_search_study(root / "trials", name="unfinished", optuna_db=False,
                       trials=[("b0", "error", 25.0, 2.0, None, 0)])
    damaged = write_search_study(root / "trials", name="damaged", optuna_db=False)
    (damaged / "trials.parquet").write_bytes(b"PAR1 not really parquet")
    # an hmdb51 layout without its split folder, and one with a split file that is not one
    for name in ("nosplits", "damaged"):
        for video in synth.rglob("*.avi"):
            target = root / name / video.relative_to(synth)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(video.read_bytes())
    splits = root / "damaged" / "testTrainMulti_7030_splits"
    splits.mkdir()
    for split_file in (synth / "testTrainMulti_7030_splits").iterdir():
        (splits / split_file.name).write_text(split_file.read_text())
    next(splits.glob("*_test_split1.txt")).write_text("a line with far too many fields 7 8 9\n")
    assert pq.read_table(root / "trials" / "weights" / "trials.parquet").num_rows == 8


def _mtsearch(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m mtsearch ARGV` in its own process group: a refusal that became a run (a
    regression) is stopped after 120 s with everything it started, and reads as exit 124."""
    proc = subprocess.Popen([sys.executable, "-m", "mtsearch", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, 124, out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(case: Case, root: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """The case in a folder of its own, which is also its cache (a refusal that decoded videos
    shows up there); no GPU, so that the `device: cuda` case is the same on every machine."""
    cwd = work / case.id
    cwd.mkdir()
    env = {**os.environ, "MTSEARCH_CACHE": str(cwd / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    return _mtsearch(case.argv(root), cwd, env)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """{case id: (process, paths it created or changed under the fixtures and its own cwd)}."""
    root = tmp_path_factory.mktemp("bad_inputs")
    fixtures, work = root / "fixtures", root / "work"
    fixtures.mkdir()
    work.mkdir()
    _fixtures(fixtures)
    before = _listing(fixtures)
    with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
        procs = dict(zip([c.id for c in CASES],
                         pool.map(lambda case: _run(case, fixtures, work), CASES)))
    after = _listing(fixtures)
    # a change under the shared fixtures cannot be told apart by case: every case reports it
    changed = [f"fixtures/{k}" for k in sorted(before.keys() | after.keys())
               if before.get(k) != after.get(k)]
    return {cid: (proc, changed + sorted(f"cwd/{p.name}" for p in (work / cid).iterdir()))
            for cid, proc in procs.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_creates_nothing(
    case: Case, outcomes: dict[str, tuple]
) -> None:
    proc, created = outcomes[case.id]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert case.needle in errors[0], errors[0]
    assert created == [], created
