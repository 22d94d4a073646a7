"""A throw-away Ray head for tests: `ray start --head` on 127.0.0.1, reached through `address=`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# `ray start` run by this Python: the `ray` script on PATH may be another environment's, or absent
# where the tests run from a virtual environment that is not activated.
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ray_head(num_cpus: int, num_gpus: int) -> Iterator[str]:
    """A head with that many logical CPUs and GPUs (GPUs need no device: Ray only counts them).

    Token authentication is off for this local head (Ray 2.60 turns it on by default for
    `ray start`, and a driver without the token cannot join).
    """
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(
        [*RAY_CLI, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--include-dashboard=false",
         f"--temp-dir={temp_dir}", "--block"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        probe = None
        while time.time() < deadline:
            probe = subprocess.run(
                [sys.executable, "-c", f"import ray; ray.init(address='{address}'); ray.shutdown()"],
                capture_output=True, text=True, timeout=60,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError((Path(temp_dir) / "head.log").read_text())
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
