"""`--address`: an empty port or a cluster that wants its auth token is one error line, fast.

Real Ray throughout: a head started with `ray start` (token authentication on), and the CLI in its
own process, as a user runs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ray_head import RAY_CLI, _free_port

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "weights.yaml"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
# a bound far above what the check takes (a few seconds past --connect-timeout, the rest is
# importing torch and Ray), but far below Ray's own minutes of retrying
SLACK_S = 90


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    return {**env, **extra}


def _mtsearch(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True,
                            timeout=300, env=env or _env(), stdin=subprocess.DEVNULL)
    return result, time.monotonic() - start


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Failed to connect" not in result.stderr, result.stderr  # Ray's own log lines
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_an_address_where_no_cluster_answers_is_one_error_line(tmp_path: Path, command: str) -> None:
    port = _free_port()  # nothing listens there
    space = SPACE if command == "run" else ROOT / "spaces" / "ablation.yaml"
    trials = tmp_path / "trials"
    result, took = _mtsearch(command, str(space), "--trials-dir", str(trials), "--quiet",
                             "--address", f"127.0.0.1:{port}", "--connect-timeout", "5")
    line = _one_error_line(result)
    assert line == f"error: --address 127.0.0.1:{port}: no Ray cluster answered within 5 s"
    assert not trials.exists()
    assert took < 5 + SLACK_S, took


def test_the_connect_timeout_must_be_a_positive_number(tmp_path: Path) -> None:
    for value in ("0", "-3", "soon"):
        result, _ = _mtsearch("run", str(SPACE), "--trials-dir", str(tmp_path / "trials"),
                              "--address", "127.0.0.1:1", "--connect-timeout", value)
        assert "--connect-timeout" in _one_error_line(result)
    assert not (tmp_path / "trials").exists()


@pytest.mark.parametrize("address,expected", [
    ("nowhere", "expected HOST:PORT"),
    ("127.0.0.1:99999", "expected HOST:PORT"),
    ("no-such-host.invalid:6379", "unknown host 'no-such-host.invalid'"),
])
def test_a_malformed_address_is_one_error_line(tmp_path: Path, address: str, expected: str) -> None:
    result, _ = _mtsearch("run", str(SPACE), "--trials-dir", str(tmp_path / "trials"), "--address", address,
                          "--connect-timeout", "5")
    line = _one_error_line(result)
    assert line.startswith(f"error: --address {address}: ") and expected in line, line
    assert not (tmp_path / "trials").exists()


@contextmanager
def token_head(token: str) -> Iterator[str]:
    """`ray start --head` with token authentication on (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = open(Path(temp_dir) / "head.log", "w")
    with_token = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    proc = subprocess.Popen(
        [*RAY_CLI, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}", "--block"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=with_token,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline, probe = time.time() + 90, None
        while time.time() < deadline:
            probe = subprocess.run(
                [sys.executable, "-c", f"import ray; ray.init(address='{address}'); ray.shutdown()"],
                capture_output=True, text=True, timeout=60, env=with_token,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None:
                text = (Path(temp_dir) / "head.log").read_text()
                pytest.skip(f"this Ray cannot start a head with token authentication: {text[-500:]}")
            time.sleep(1)
        else:
            raise RuntimeError(f"Ray head did not start: {probe.stderr[-2000:] if probe else ''}")
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # `ray start --block` takes 10 s over a SIGTERM; its processes need no clean exit
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[tuple[str, str]]:
    try:
        from ray._raylet import AuthenticationMode  # noqa: F401
    except ImportError:
        pytest.skip("this Ray build has no token authentication")
    token = secrets.token_hex(16)
    with token_head(token) as address:
        yield address, token


JOIN_SCRIPT = """
import sys
from mtsearch.search.cluster import connect_ray
import ray
connect_ray(sys.argv[1], None, print, 30)
print("cpus:", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


@pytest.mark.parametrize("extra,expected", [
    ({}, "the Ray cluster requires its auth token; set RAY_AUTH_MODE=token"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}, "the Ray cluster refused this machine's auth token"),
])
def test_a_cluster_that_needs_its_token_is_one_error_line(
    tmp_path: Path, token_cluster: tuple[str, str], extra: dict[str, str], expected: str,
) -> None:
    address, _ = token_cluster
    trials = tmp_path / "trials"
    result, took = _mtsearch("run", str(SPACE), "--trials-dir", str(trials), "--quiet", "--address", address,
                             "--connect-timeout", "10", env=_env(**extra))
    line = _one_error_line(result)
    assert line.startswith(f"error: --address {address}: {expected}"), line
    assert "RAY_AUTH_TOKEN" in line and "RAY_AUTH_TOKEN_PATH" in line, line
    assert not trials.exists()
    assert took < 10 + SLACK_S, took


def test_the_token_lets_the_driver_in(token_cluster: tuple[str, str]) -> None:
    address, token = token_cluster
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    result = subprocess.run([sys.executable, "-c", JOIN_SCRIPT, address], capture_output=True, text=True,
                            timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"joining the Ray cluster at {address}" in result.stdout
    assert "cpus: 1.0" in result.stdout, result.stdout
