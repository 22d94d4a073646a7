"""Trials of a search that share a process (`resources.trials_per_process: K`): the Ray side of
`train/slots.py`.

Each Tune trial stays one trial, so its Optuna trial, ASHA decisions, rows, checkpoint and
`--resume` are those of a trial alone. Only its training moves: the trial becomes a proxy
(`HostedTrainer`, the trainer `run_trial` calls) that asks a per-node, per-GPU, per-shape process
host for a slot, then relays each epoch (its row and checkpoint) to Tune and asks for the next.
The host trains up to K slots in one process (`SlotHost`); a slot trains an epoch only when its
proxy asks, so a trial ASHA stops has trained no further than what ASHA saw, and its place goes
to the next trial of the shape once the host finds the proxy gone.

A proxy shows it is there by renewing a lease from a thread of its own (a proxy busy reporting
still renews); a host counts one whose lease ran out as gone. The registry that places slots is
an actor of the driver and the hosts are its own, so the whole arrangement ends with the driver,
even on kill -9. The proxy keeps its reservation (CPUs, GPU share); hosts reserve nothing, and
give each slot its proxy's CPUs as torch threads.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mtsearch.config import TrialConfig, shape_key
from mtsearch.search.trainable import prepare_work_dir
from mtsearch.train.slots import SlotEvent, SlotHost, SlotLost

RESERVATION_S = 300.0  # a place reserved for a proxy that never joined is free again after this
RENEW_EVERY_S = 1.0  # a proxy renews its lease this often
LEASE_S = 30.0  # a slot waiting for its proxy counts it gone after this long without a renewal
QUICK_LEASE_S = 10.0  # ... and a placement looking for a free place, after this long


class Leases:
    """When each proxy last renewed its lease (the host's clock): whether it is still there."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._renewed: dict[str, float] = {}
        self._lock = threading.Lock()

    def renew(self, key: str) -> None:
        with self._lock:
            self._renewed[key] = self.clock()

    def drop(self, key: str) -> None:
        with self._lock:
            self._renewed.pop(key, None)

    def alive(self, key: str, quick: bool = False) -> bool:
        """False once `key` has not renewed for LEASE_S (QUICK_LEASE_S with `quick`)."""
        with self._lock:
            renewed = self._renewed.get(key)
        return renewed is not None and self.clock() - renewed < (QUICK_LEASE_S if quick else LEASE_S)

    def of(self, key: str) -> Callable[..., bool]:
        """`key`'s liveness as a slot asks it (`alive(quick=False)`)."""
        return lambda quick=False: self.alive(key, quick)


@ray.remote(num_cpus=0, max_concurrency=1000)
class ProcessHost:
    """One process training up to `capacity` slots of one network shape on one node (and GPU)."""

    def __init__(self, gpu_ids: list[str]):
        # the proxies' GPUs, and none for CPU trials: this actor reserves none, and Ray leaves
        # the variable alone for actors without GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        self.slots = SlotHost()
        self.leases = Leases()
        self.reserved: dict[str, float] = {}
        self.lock = threading.Lock()  # the reservations: no call to another process under it

    def reserve(self, key: str, capacity: int) -> bool:
        """Hold a place for `key` if fewer than `capacity` slots train or are promised here."""
        with self.lock:
            now = time.monotonic()
            self.reserved = {k: t for k, t in self.reserved.items() if now - t < RESERVATION_S}
            taken = set(self.slots.training()) | set(self.reserved)
            if key not in taken and len(taken) >= capacity:  # a stopped trial's slot may be waiting
                self.slots.prune(lambda alive: not alive(quick=True))
                taken = set(self.slots.training()) | set(self.reserved)
            if key not in taken and len(taken) >= capacity:
                return False
            self.reserved[key] = now
            return True

    def join(self, key: str, cfg: TrialConfig, out_dir: str | None, resume: bool, threads: int,
             leased: bool = True) -> None:
        """Train `cfg` in slot `key`; with `leased`, its proxy renews a lease (`renew`) while it
        is there, and the slot leaves once the lease runs out."""
        if leased:
            self.leases.renew(key)
        self.slots.join(key, cfg, out_dir, resume=resume, threads=threads,
                        alive=self.leases.of(key) if leased else None)
        with self.lock:
            self.reserved.pop(key, None)

    def renew(self, key: str) -> None:
        self.leases.renew(key)

    def ping(self) -> bool:
        """A no-op a caller can time (is the host there and answering?)."""
        return True

    def next(self, key: str, stop: bool = False) -> SlotEvent:
        try:
            event = self.slots.next(key, stop)
        except SlotLost as exc:  # counted gone while it was still there: its trial restarts
            self.leases.drop(key)
            return SlotEvent("end", error=exc)
        if event.kind == "end":
            self.leases.drop(key)
        if event.error is not None:
            try:
                pickle.loads(pickle.dumps(event.error))
            except Exception:  # noqa: BLE001 - an exception that cannot cross processes as itself
                event.error = RuntimeError(f"{type(event.error).__name__}: {event.error}")
        return event

    def leave(self, key: str) -> None:
        """The proxy stopped asking (it failed or was stopped): nobody takes the end."""
        self.slots.leave(key, abandoned=True)
        self.leases.drop(key)

    def retire(self, key: str) -> bool:
        return self.slots.retire(key)


@ray.remote(num_cpus=0)
class HostRegistry:
    """Places each proxy in a host of its node, GPU and shape with a free place, else a new one."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.hosts: dict[tuple[str, tuple[str, ...], str], list[Any]] = {}
        self.placed: dict[str, Any] = {}  # trial -> the host of its last placement

    def place(self, node_id: str, gpu_ids: list[str], shape: str, key: str) -> Any:
        hosts = self.hosts.setdefault((node_id, tuple(gpu_ids), shape), [])
        for host in list(hosts):
            try:
                if ray.get(host.reserve.remote(key, self.capacity)):
                    self.placed[key] = host
                    return host
            except ray.exceptions.RayActorError:  # a host that died: its slots' proxies retry
                hosts.remove(host)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        host = ProcessHost.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(list(gpu_ids))
        ray.get(host.reserve.remote(key, self.capacity))
        hosts.append(host)
        self.placed[key] = host
        return host

    def host_of(self, key: str) -> Any:
        """Where trial `key` was last placed (None: never), whatever became of it since."""
        return self.placed.get(key)


def hosted_trainer(capacity: int, trainer: Any) -> tuple[Any, int]:
    """The trainer of a search training `capacity` trials a process, and that K: a `HostedTrainer`
    with the registry of this driver (it, and the hosts it starts, end with the driver); or the
    given trainer (a caller's own trains one trial a process), and 1."""
    if trainer is not None or capacity <= 1:
        return trainer, 1
    return HostedTrainer(HostRegistry.remote(capacity)), capacity


def _retire_earlier_attempt(registry: Any, key: str) -> bool:
    """A trial Tune restarts (its worker died mid-epoch) may find its earlier slot still training:
    stop it and wait for it; whether there was one."""
    old = ray.get(registry.host_of.remote(key))
    if old is None:
        return False
    try:
        return bool(ray.get(old.retire.remote(key)))
    except ray.exceptions.RayActorError:  # that host is gone, and its slots with it
        return False


class _Renewer:
    """The proxy's side of its lease: renews it every RENEW_EVERY_S from a thread of its own
    (fire and forget), until stopped or until the proxy's process ends."""

    def __init__(self, host: Any, key: str):
        self.host, self.key = host, key
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{key}", daemon=True)

    def __enter__(self) -> _Renewer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(RENEW_EVERY_S):
            try:
                self.host.renew.remote(self.key)
            except Exception:  # noqa: BLE001 - a host that is gone: the proxy's next call says so
                return


def _with_trace(error: BaseException, trace: str | None, say: Callable[[str], None]) -> BaseException:
    """The slot's exception with where it was raised in the host (a note on Python 3.11+, else a
    log line)."""
    if trace:
        text = f"in the process host:\n{trace}"
        if hasattr(error, "add_note"):
            error.add_note(text)
        else:
            say(text)
    return error


@dataclass(frozen=True)
class HostedTrainer:
    """The trainer of a search's trial that shares a process (the `Trainer` protocol of
    `trainable.py`): trains `cfg` in a slot of a process host and relays its epochs, so to
    `run_trial` it is `fit`."""

    registry: Any

    def __call__(self, cfg: TrialConfig, out_dir: str | Path | None = None, *, on_epoch: Any = None,
                 resume: bool = True, log: Any = None) -> Any:
        say = log or (lambda line: None)
        context = ray.get_runtime_context()
        key = tune.get_context().get_trial_id()
        threads = max(1, int(context.get_assigned_resources().get("CPU", 1)))
        gpus = [str(g) for g in ray.get_gpu_ids()]
        shape = repr((*shape_key(cfg), cfg.device))
        if _retire_earlier_attempt(self.registry, key) and out_dir is not None:
            # the earlier attempt's slot may have saved an epoch Tune never got: start again from
            # Tune's last checkpoint, as run_trial did before that slot had stopped
            out_dir = prepare_work_dir()
        host = ray.get(self.registry.place.remote(context.get_node_id(), gpus, shape, key))
        with _Renewer(host, key):
            ray.get(host.join.remote(key, cfg, str(out_dir) if out_dir is not None else None, resume,
                                     threads))
            stop = False
            try:
                while True:
                    event: SlotEvent = ray.get(host.next.remote(key, stop))
                    for line in event.notes:
                        say(line)
                    if event.kind == "end":
                        if event.error is not None:
                            raise _with_trace(event.error, event.error_trace, say)
                        return event.result
                    ckpt = Path(event.ckpt_dir) if event.ckpt_dir is not None else None
                    stop = on_epoch is not None and on_epoch(event.metrics, ckpt) is False
            except BaseException:  # the slot must not wait for a proxy that stopped asking
                host.leave.remote(key)
                raise
