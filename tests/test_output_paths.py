"""Output paths are validated before any work (issue 19): a path that is a file where a folder is
wanted (or a folder where a file is), a parent that is a file, or a place that cannot be written is
one `error:` line naming the option, exit 2, and nothing is created; `train` makes its run folder
only once its config and data validate.

Commands run through the real CLI, several at a time in one module fixture. A folder that cannot
be written is a read-only tmpfs where the tests run as root (permission bits do not stop root) and a
folder without write permission otherwise; where neither is possible those cases are skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_report import write_search_study

from mtsearch.errors import InvalidInput
from mtsearch.files import check_output_dir, check_output_file

SPACES = Path(__file__).resolve().parents[1] / "spaces"


# ---- the helpers, in process ---------------------------------------------------------------------


def test_check_output_dir_accepts_new_and_existing_folders(tmp_path: Path) -> None:
    check_output_dir(tmp_path, "--out")
    check_output_dir(tmp_path / "a" / "b" / "c", "--out")
    check_output_dir("relative/run", "--out")
    assert sorted(tmp_path.iterdir()) == []  # checking creates nothing


@pytest.mark.parametrize("make,path,what", [
    (lambda t: (t / "f").write_text("x"), "f", "--out: not a folder: a file is in the way"),
    (lambda t: (t / "f").write_text("x"), "f/sub/run", "--out: cannot make the folder: "),
    (lambda t: (t / "link").symlink_to(t / "gone"), "link", "--out: not a folder: a broken link"),
    (lambda t: (t / "link").symlink_to(t / "gone"), "link/run", "is a broken link"),
])
def test_check_output_dir_refusals(tmp_path: Path, make: Callable, path: str, what: str) -> None:
    make(tmp_path)
    with pytest.raises(InvalidInput) as err:
        check_output_dir(tmp_path / path, "--out")
    assert what in err.value.render() and f"(got '{tmp_path / path}')" in err.value.render()


def test_check_output_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "f").write_text("x")
    check_output_file(tmp_path / "f", "--out")  # an existing file is replaced: fine
    check_output_file(tmp_path / "new" / "best.yaml", "--out")
    with pytest.raises(InvalidInput, match="--out: is a folder, expected a file path"):
        check_output_file(tmp_path / "folder", "--out")
    with pytest.raises(InvalidInput, match="--out: cannot write the file: '.*/f' is a file"):
        check_output_file(tmp_path / "f" / "best.yaml", "--out")


# ---- a folder that cannot be written ---------------------------------------------------------------


@dataclass
class Places:
    root: Path  # files and folders in the way, a config, a dataset, studies
    locked: Path | None  # a folder that cannot be written (holding a study), or None
    why_not: str  # why `locked` is None


def _lock(folder: Path) -> tuple[Path | None, str, Callable[[], None]]:
    """Make `folder` unwritable: (folder or None, why not, undo)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        for sub in folder.rglob("*"):
            if sub.is_dir():
                sub.chmod(0o555)
        return folder, "", lambda: [p.chmod(0o755) for p in [folder, *folder.rglob("*")] if p.is_dir()]
    keep = folder.with_name(folder.name + ".src")
    folder.rename(keep)
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        return None, ("running as root, where permission bits do not stop writes, and a tmpfs cannot "
                      f"be mounted here ({mounted.stderr.strip()})"), lambda: None
    shutil.copytree(keep, folder, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return folder, "", lambda: subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    from mtsearch.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("output_paths")
    synth = write_synthetic(root / "synth", 2, 2, seed=0)
    (root / "ok.yaml").write_text(f"data: {{dataset: synthetic, root: '{synth}'}}\n"
                                  "model: {preset: tiny}\noptim: {epochs: 1}\n")
    (root / "noroot.yaml").write_text(f"data: {{dataset: hmdb51, root: '{root / 'nope'}'}}\n")
    (root / "cuda.yaml").write_text(f"device: cuda\ndata: {{dataset: synthetic, root: '{synth}'}}\n")
    (root / "fps.yaml").write_text(f"data: {{dataset: synthetic, root: '{synth}', fps: 240}}\n")
    (root / "afile").write_text("in the way")
    (root / "adir").mkdir()
    (root / "adir.md").mkdir()  # export --out adir.yaml: its card's path is a folder
    blocked = write_search_study(root / "trials", name="blocked", optuna_db=False)
    (blocked / "best.yaml").mkdir()  # export's default output is a folder
    (blocked / "plots").write_text("plot's default output is a file")
    (blocked / "confirm").write_text("confirm's child study is a file")
    write_search_study(root / "trials", optuna_db=False)
    write_search_study(root / "locked" / "trials", optuna_db=False)
    locked, why_not, undo = _lock(root / "locked")
    try:
        yield Places(root, locked, why_not)
    finally:
        undo()


# ---- every command, through the CLI ------------------------------------------------------------------

STUDY = "trials/weights"


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Places], list[str]]
    option: str  # the option the error line names
    got: Callable[[Places], str]  # the path it names
    locked: bool = False  # needs the unwritable folder
    cwd_file: str | None = None  # a file of this name in the case's working folder (a default output)


def _p(places: Places, name: str) -> str:
    return str(places.root / name)


def _l(places: Places, name: str) -> str:
    return str((places.locked or places.root / "locked") / name)


WEIGHTS, ABLATION = str(SPACES / "weights.yaml"), str(SPACES / "ablation.yaml")
_DIR_COMMANDS: list[tuple[str, Callable[[Places, str], list[str]], str, str]] = [
    # (name, argv for an output folder, option, the path the error names relative to the folder)
    ("run", lambda p, out: ["run", WEIGHTS, "--trials-dir", out], "--trials-dir", "/weights"),
    ("ablate", lambda p, out: ["ablate", ABLATION, "--trials-dir", out], "--trials-dir", "/ablation"),
    ("train", lambda p, out: ["train", _p(p, "ok.yaml"), "--out", out], "--out", ""),
    ("plot", lambda p, out: ["plot", _p(p, STUDY), "--out", out], "--out", ""),
    ("synth", lambda p, out: ["data", "synth", out], "DIR", ""),
]


def _dir_cases() -> list[Case]:
    cases = []
    for name, argv, option, tail in _DIR_COMMANDS:
        def make(where: Callable[[Places], str], argv=argv, tail=tail) -> tuple[Callable, Callable]:
            return (lambda p: argv(p, where(p))), (lambda p: where(p) + tail)

        for fault, where, locked in [
            ("is-a-file", lambda p: _p(p, "afile"), False),
            ("parent-is-a-file", lambda p: _p(p, "afile/out"), False),
            ("parent-not-writable", lambda p: _l(p, "new/out"), True),
        ]:
            run, got = make(where)
            cases.append(Case(f"{name}-{fault}", run, option, got, locked))
        if name != "synth":  # the synthetic set goes into a new or empty folder only
            run, got = make(lambda p: _l(p, "trials"))
            cases.append(Case(f"{name}-folder-not-writable", run, option, got, True))
    return cases


CASES = _dir_cases() + [
    Case("export-is-a-folder", lambda p: ["export", _p(p, STUDY), "--out", _p(p, "adir")], "--out",
         lambda p: _p(p, "adir")),
    Case("export-parent-is-a-file", lambda p: ["export", _p(p, STUDY), "--out", _p(p, "afile/b.yaml")],
         "--out", lambda p: _p(p, "afile/b.yaml")),
    Case("export-card-is-a-folder", lambda p: ["export", _p(p, STUDY), "--out", _p(p, "adir.yaml")],
         "--out", lambda p: _p(p, "adir.yaml")),
    Case("export-folder-not-writable", lambda p: ["export", _p(p, STUDY), "--out", _l(p, "b.yaml")],
         "--out", lambda p: _l(p, "b.yaml"), locked=True),
    # the defaults: trials/, runs/<config>, trials/NAME/best.yaml, trials/NAME/plots
    Case("run-default-trials-is-a-file", lambda p: ["run", WEIGHTS], "--trials-dir",
         lambda p: "trials/weights", cwd_file="trials"),
    Case("train-default-runs-is-a-file", lambda p: ["train", _p(p, "ok.yaml")], "--out",
         lambda p: "runs/ok", cwd_file="runs"),
    Case("export-default-is-a-folder", lambda p: ["export", _p(p, "trials/blocked")], "--out",
         lambda p: _p(p, "trials/blocked/best.yaml")),
    Case("plot-default-is-a-file", lambda p: ["plot", _p(p, "trials/blocked")], "--out",
         lambda p: _p(p, "trials/blocked/plots")),
    Case("export-default-study-not-writable", lambda p: ["export", _l(p, STUDY)], "--out",
         lambda p: _l(p, f"{STUDY}/best.yaml"), locked=True),
    Case("plot-default-study-not-writable", lambda p: ["plot", _l(p, STUDY)], "--out",
         lambda p: _l(p, f"{STUDY}/plots"), locked=True),
    # confirm's race is a child study, trials/NAME/confirm
    Case("confirm-folder-is-a-file", lambda p: ["confirm", _p(p, "trials/blocked")], "confirm",
         lambda p: _p(p, "trials/blocked/confirm")),
    Case("confirm-study-not-writable", lambda p: ["confirm", _l(p, STUDY)], "confirm",
         lambda p: _l(p, f"{STUDY}/confirm"), locked=True),
]

# `train` refuses these only after loading its config and indexing its data: the run folder given
# as --out must still not appear
REFUSED_TRAINING = [
    ("missing-data-root", "noroot.yaml", "data.root"),
    ("cuda-without-gpu", "cuda.yaml", "device"),
    ("fps-above-the-source", "fps.yaml", "data.fps"),
]
CASES += [Case(f"train-{what}-creates-no-run-folder",
               lambda p, config=config: ["train", _p(p, config), "--out", "run"], key, lambda p: "")
          for what, config, key in REFUSED_TRAINING]


def _listing(root: Path) -> dict[str, int]:
    found = {}
    for path in root.rglob("*"):
        stat = path.lstat()
        found[str(path.relative_to(root))] = 0 if path.is_dir() else stat.st_mtime_ns ^ stat.st_size
    return found


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


def _run(case: Case, places: Places, work: Path) -> subprocess.CompletedProcess[str] | None:
    if case.locked and places.locked is None:
        return None
    cwd = work / case.id
    cwd.mkdir()
    if case.cwd_file:
        (cwd / case.cwd_file).write_text("in the way")
    env = {**os.environ, "MTSEARCH_CACHE": str(cwd / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    return _mtsearch(case.argv(places), cwd, env)


@pytest.fixture(scope="module")
def outcomes(places: Places, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """{case id: (process or None when skipped, what it created: shared places or its own folder)}."""
    work = tmp_path_factory.mktemp("output_paths_work")
    before = _listing(places.root)
    with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
        procs = dict(zip([c.id for c in CASES], pool.map(lambda c: _run(c, places, work), CASES)))
    after = _listing(places.root)
    changed = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    result = {}
    for case in CASES:
        mine = sorted(p.name for p in (work / case.id).iterdir()) if (work / case.id).exists() else []
        result[case.id] = (procs[case.id], changed + [f"cwd/{n}" for n in mine if n != case.cwd_file])
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_output_path_is_refused_before_any_work(
    case: Case, places: Places, outcomes: dict[str, tuple]
) -> None:
    proc, created = outcomes[case.id]
    if proc is None:
        pytest.skip(places.why_not)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"{case.option}: " in errors[0], errors[0]
    assert f"'{case.got(places)}'" in errors[0] or not case.got(places), errors[0]
    if case.locked:
        assert "not writable" in errors[0], errors[0]
    assert created == [], created
