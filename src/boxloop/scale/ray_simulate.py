"""`boxloop simulate --workers N [--ray-address ADDR]`: every strategy x seed run as a Ray task.

Each seed's base (seed set withheld, round-0 model trained) is one task; each (seed, strategy) run
is another, started once its base is done, working in its own folder (simulate.run_strategy, the
very function the sequential path calls). The driver merges the results into one results.json
afterwards (simulate.collect_results), so they equal the sequential run's: each run's work does not
depend on where or alongside what it ran (one torch thread each; CPU training is deterministic).

Delegated to Ray: placing tasks on CPUs (local or a cluster), and retrying a task whose worker
process died (`max_retries`). A retried task resumes its run from that run's store and checkpoints
exactly as a rerun of the command would (the loop's resume guarantees), so its result does not
change. Application errors (bad labels, ...) are not retried; the first one stops the command and
is raised as the original exception. Written by hand: which runs are missing, the dependency of a
run on its seed's base, and an optional cap on the tasks in flight.

On a cluster, OUT and the dataset must be at the same path on every node (a shared file system),
and boxloop installed there in the same version.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from boxloop.scale.ray_session import ray_session, unwrap_remote_error

__all__ = ["simulate_on_ray", "Job"]

# (kind, seed, strategy): kind "base" (strategy None) or "run"
Job = tuple[str, int, "str | None"]


def simulate_on_ray(jobs: Sequence[Job], work: Callable[[Job, Any, Any, int], Job], spec: Any, truth: Any,
                    workers: int | None = None, address: str | None = None, threads: int = 1,
                    gpus: float | None = None, echo: Callable[[str], None] = print,
                    max_retries: int = 3) -> list[Job]:
    """Run `jobs` as Ray tasks, `work(job, spec, truth, threads)` each, a run after its seed's base;
    returns the jobs run. simulate (loop/simulate.py) says which jobs and what each does; this module
    only schedules them. `workers` sizes a local Ray (and caps the tasks in flight on a cluster);
    `threads` torch threads (and Ray CPUs) per task; `gpus` per task (default: 1 with device 'cuda',
    else 0: Ray hides the GPUs from a task that asks for none, so 'auto' trains on the CPU)."""
    jobs = list(jobs)
    if not jobs:
        echo("every run is finished; nothing to do")
        return []
    with ray_session(workers if address is None else None, address) as ray:
        if gpus is None:
            gpus = 1.0 if spec.config.training.device == "cuda" else 0.0
        task = ray.remote(work).options(num_cpus=threads, num_gpus=gpus, max_retries=max_retries,
                                           retry_exceptions=False)
        truth_ref = ray.put(truth)
        limit = workers or len(jobs)
        waiting = list(jobs)
        done_bases: set[int] = set()
        inflight: dict[Any, Job] = {}

        def ready(job: Job) -> bool:
            return job[0] == "base" or job[1] in done_bases

        try:
            while waiting or inflight:
                for job in [j for j in waiting if ready(j)]:
                    if len(inflight) >= limit:
                        break
                    waiting.remove(job)
                    inflight[task.remote(job, spec, truth_ref, threads)] = job
                    echo(_label(job) + ": started")
                if not inflight:
                    raise RuntimeError(f"jobs left that can never start: {waiting}")  # pragma: no cover
                finished, _ = ray.wait(list(inflight), num_returns=1)
                for ref in finished:
                    job = inflight.pop(ref)
                    ray.get(ref)  # raises the task's error, if any
                    if job[0] == "base":
                        done_bases.add(job[1])
                    echo(_label(job) + ": done")
        except Exception as e:
            for ref in inflight:
                ray.cancel(ref, force=True)
            cause = unwrap_remote_error(e)
            if cause is e:
                raise
            raise cause from None
    return jobs


def _label(job: Job) -> str:
    kind, seed, strategy = job
    return f"seed {seed} initial model" if kind == "base" else f"seed {seed} {strategy}"
