"""Joining a Ray cluster (`--address`) or starting a local one for a study's driver."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import optuna
import ray

Log = Callable[[str], None]


def connect_ray(address: str | None, num_cpus: int | None, say: Log) -> bool:
    """Join `address` or start a local Ray; True when this call started it (and must stop it)."""
    started = False
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("MTSEARCH_")}
        common = dict(log_to_driver=False, logging_level=logging.ERROR,
                      runtime_env={"env_vars": env} if env else None)
        if address:
            say(f"joining the Ray cluster at {address}")
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **common)
        started = True
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return started
