"""Joining a Ray cluster (`--address`) or starting a local one for a study's driver.

`ray.init(address=...)` retries an absent or refusing cluster for minutes, and Ray's C++ core
prints a "Failed to connect to GCS" line each time. So the address is checked first, within
`--connect-timeout` seconds: a TCP connect to HOST:PORT, then one GCS request from a child
process (its stderr, where Ray's core logs, is dropped), which also tells a missing or wrong auth
token apart. Only then does `ray.init` run; whatever it still raises becomes one `--address` error.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mtsearch.errors import InvalidInput

Log = Callable[[str], None]

DEFAULT_CONNECT_TIMEOUT = 30.0  # seconds; `--connect-timeout` on run, ablate and confirm
RAY_CLIENT_PORT = 10001  # `ray://HOST` without a port: Ray Client's default

# One GCS request, as `ray.init` makes it (the same token rules), in a child process.
# Prints `ready` once Ray's core is imported, then `ok`, `auth missing|refused <token mode on:
# 0|1>` or `fail <message>`; or `skip` alone (a Ray without these internals).
_GCS_PROBE = r"""
import sys
address, timeout_ms, auto = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
try:
    from ray._raylet import AuthenticationMode, InnerGcsClient, get_authentication_mode
    from ray._private.authentication import authentication_token_setup as auth
except ImportError:
    print("skip")
    raise SystemExit(0)
print("ready", flush=True)
try:
    if auto:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    token_mode = int(get_authentication_mode() == AuthenticationMode.TOKEN)
    try:
        auth.ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except Exception as exc:
        if type(exc).__name__ == "AuthenticationError":
            print("auth missing", token_mode)
            raise SystemExit(0)
        raise
    InnerGcsClient.standalone(address, None, timeout_ms)
except Exception as exc:
    if type(exc).__name__ == "AuthenticationError":
        print("auth refused", token_mode)
    else:
        print("fail", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
else:
    print("ok")
"""


def connect_ray(address: str | None, num_cpus: int | None, say: Log,
                timeout: float = DEFAULT_CONNECT_TIMEOUT) -> bool:
    """Join `address` or start a local Ray; True when this call started it (and must stop it).

    A cluster that does not answer within `timeout` seconds, or refuses this driver (its auth
    token), is an InvalidInput naming `--address`, raised before anything is written."""
    import optuna
    import ray

    started = False
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("MTSEARCH_")}
        common = dict(log_to_driver=False, logging_level=logging.ERROR,
                      runtime_env={"env_vars": env} if env else None)
        if address:
            target = check_address(address, timeout)
            say(f"joining the Ray cluster at {address}" + (f" ({target})" if target != address else ""))
            try:
                ray.init(address=address, **common)
            except Exception as exc:
                raise _join_error(address, exc) from None
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **common)
        started = True
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return started


def check_address(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> str:
    """Check that a Ray cluster answers at `address` (HOST:PORT, `auto` or `ray://HOST[:PORT]`)
    within `timeout` seconds and lets this driver in; returns the HOST:PORT that was checked."""
    deadline = time.monotonic() + timeout
    flag = f"--address {address}"
    client = address.startswith("ray://")
    if address == "auto":
        target = _find_local_cluster(flag)
    else:
        target = address[len("ray://"):].split("/", 1)[0] if client else address
    host, port = _host_port(flag, target, RAY_CLIENT_PORT if client else None)
    where = "" if target == address or client else f" at {target}"
    if not _tcp_answers(flag, host, port, deadline):
        raise InvalidInput(None, flag, f"no Ray cluster answered{where} within {timeout:g} s")
    if client:  # Ray Client speaks its own protocol: ray.init's own errors tell the rest
        return target
    # the TCP connect may have used up the time; a GCS still gets a few seconds to answer
    rpc_s = max(deadline - time.monotonic(), min(timeout, 5.0))
    answer = _gcs_probe(target, rpc_s, auto=address == "auto")
    if answer == "ok" or answer == "skip":
        return target
    if answer.startswith("auth "):
        raise InvalidInput(None, flag, _token_advice(answer.split()))
    raise InvalidInput(None, flag, f"no Ray cluster answered{where} within {timeout:g} s")


def _find_local_cluster(flag: str) -> str:
    """`auto`: the cluster `ray start` last started on this machine, as Ray itself finds it."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except Exception:
        raise InvalidInput(None, flag, "no running Ray cluster found on this machine; start one with "
                           "`ray start --head`, or give its HOST:PORT") from None


def _host_port(flag: str, target: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port_text = target.rpartition(":")
    if not sep or "]" in port_text:  # no port (an IPv6 address in brackets has colons inside)
        host, port_text = target, str(default_port) if default_port else ""
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not host or not 0 < port < 65536:
        raise InvalidInput(None, flag, "expected HOST:PORT (the head's GCS port, 6379 by default), "
                           "ray://HOST:PORT or auto")
    return host, port


def _tcp_answers(flag: str, host: str, port: int, deadline: float) -> bool:
    """Whether something accepts a TCP connection at host:port before `deadline` (retried: a head
    may still be starting). An unknown host name is an error at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidInput(None, flag, f"unknown host {host!r}") from None
    while True:
        for family, kind, proto, _, sockaddr in infos:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(min(left, 5.0))
                    sock.connect(sockaddr)
                    return True
            except OSError:
                continue
        if deadline - time.monotonic() <= 0:
            return False
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def _gcs_probe(target: str, seconds: float, auto: bool) -> str:
    """One GCS request to `target` in a child process, killed if it has no answer `seconds` after
    it imported Ray's core (the import itself gets up to a minute); its answer (see `_GCS_PROBE`)."""
    command = [sys.executable, "-c", _GCS_PROBE, target, str(max(int(seconds * 1000), 1)), str(int(auto))]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    answer = "fail timed out"
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            until = time.monotonic() + 60.0
            while (left := until - time.monotonic()) > 0 and sel.select(left):
                line = proc.stdout.readline().strip()
                if line == "ready":
                    until = time.monotonic() + seconds + 1.0
                    continue
                answer = line or f"fail exit {proc.wait()}"
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return answer


def _token_advice(words: list[str]) -> str:
    """What to set, for a cluster that wants its auth token: Ray sends one only in token mode."""
    where = "RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file> (default ~/.ray/auth_token)"
    if words[1] == "missing":
        return f"token authentication is on (RAY_AUTH_MODE=token) but no token was found; set {where}"
    if words[2:] == ["1"]:
        return (f"the Ray cluster refused this machine's auth token; set the cluster's token with {where}")
    return ("the Ray cluster requires its auth token; set RAY_AUTH_MODE=token and the cluster's token "
            f"with {where}")


def _join_error(address: str, exc: BaseException) -> InvalidInput:
    """`ray.init`'s failure to join, as one `--address` error line."""
    flag = f"--address {address}"
    if type(exc).__name__ == "AuthenticationError":
        token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
        has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                         or (Path.home() / ".ray" / "auth_token").exists())
        kind = "refused" if has_token or not token_mode else "missing"
        return InvalidInput(None, flag, _token_advice(["auth", kind, str(int(token_mode))]))
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InvalidInput(None, flag, f"could not join the Ray cluster: {text}")
