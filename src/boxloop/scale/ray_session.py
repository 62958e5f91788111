"""Start (or join) the Ray that `--workers N [--ray-address ADDR]` asks for, and end it afterwards.

Written by hand: only the choice between a local Ray with N CPUs and an existing cluster, reusing a
Ray that the caller already started (tests, notebooks), the one-line error when Ray is not
installed, and turning a failed remote call back into the exception it carried (so the CLI prints
a user error as one line, as it does without Ray). Ray itself does the scheduling, retries and
transport. Nothing in boxloop's default path imports this module, or Ray.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["RayNotInstalled", "RayUnreachable", "ray_session", "unwrap_remote_error", "cluster_gpus"]

INSTALL_HINT = "pip install 'boxloop[ray]'"


class RayNotInstalled(ValueError):
    """--workers / --ray-address without Ray installed (a user error: one line, exit 1)."""


class RayUnreachable(ValueError):
    """--ray-address names no Ray cluster this process can join (a user error: one line, exit 1)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalled(f"--workers and --ray-address need Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


@contextmanager
def ray_session(workers: int | None, address: str | None = None) -> Iterator[Any]:
    """Yield the `ray` module with Ray running: a Ray already initialised in this process is used
    as it is (and left running); else `address` is joined, or a local Ray with `workers` CPUs is
    started; either is shut down on exit."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError: all "cannot join"
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            raise RayUnreachable(
                f"cannot join the Ray cluster at {address}: {first}. Is it running (`ray start --head` on one "
                "machine)? With Ray's token authentication, set RAY_AUTH_MODE=token here and give the cluster's "
                "token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from e
    else:
        # the workers inherit this environment: boxloop (and PYTHONPATH) resolve as they do here
        ray.init(num_cpus=workers or os.cpu_count() or 1, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_gpus() -> float:
    """GPUs in the running Ray cluster (0 on a CPU-only one)."""
    ray = import_ray()
    return float(ray.cluster_resources().get("GPU", 0))


def unwrap_remote_error(e: BaseException) -> BaseException:
    """The exception raised inside a Ray task or actor (ValueError, ImageError, ...) when `e` carries
    one, so callers see what they would without Ray; else `e` itself."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        cause = getattr(x, "cause", None)  # ray.exceptions.RayTaskError
        if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
            return cause
        x = cause if isinstance(cause, BaseException) else (x.__cause__ or x.__context__)
    return e
