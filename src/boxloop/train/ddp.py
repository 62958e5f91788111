"""`boxloop train ... --nproc N`: train.fit on N processes through torchrun (gloo on CPU, nccl on GPU).

The calling process (the project's one writer) writes a spec -- samples, classes, the detector's
config and initial weights, the TrainConfig, the output folder -- into the output folder, runs
`python -m torch.distributed.run ... -m boxloop.train.ddp SPEC`, and reads back what rank 0 reports. Every
rank runs the same `train.fit` loop with a `DistContext`; nothing here touches the project store.

Delegated to torch.distributed: process launch, rendezvous and restarts (torchrun), gradient
averaging (DistributedDataParallel), collectives (barrier, broadcast, all_reduce). Written by hand:
- `EpochOrderSampler`, a DistributedSampler over fit's own seeded epoch order: rank r takes
  positions r, r+N, ... of that order, so the union of the ranks' k-th local batches is exactly the
  k-th batch of a one-process run with the same (global) batch size, and a resumed run skips the
  same batches (exact resume, as today). The last batch of an epoch is padded as DistributedSampler
  pads (a repeated image or two when the pool is not a multiple of N);
- the loss wrapper DDP needs (our Detector has `loss()`, DDP hooks `forward()`), the averaging of
  the logged loss over ranks, rank 0 validating and broadcasting the mAP so all ranks take the same
  early-stopping decision, and the spec/result files.

Equal to one process "within tolerance", not exactly: each rank normalises its loss over its share
of the batch (e.g. FCOS divides by the foreground count of its images), and trainable BatchNorm sees
per-rank batch statistics. tests/test_ddp.py measures the difference.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DistributedSampler

from boxloop.train.data import Sample
from boxloop.detectors.base import Detector

__all__ = ["DistContext", "EpochOrderSampler", "fit_distributed", "SPEC_NAME"]

SPEC_NAME = "ddp_spec.pt"
RESULT_NAME = "ddp_result.json"
ERROR_NAME = "ddp_error_rank{rank}.json"  # a rank's user error (ValueError: diverged, bad image), for the caller


class EpochOrderSampler(DistributedSampler):
    """DistributedSampler whose order is train.fit's seeded epoch order (not its own permutation)."""

    def __init__(self, n: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.n = n

    def __iter__(self) -> Iterator[int]:
        from boxloop.train.fit import epoch_order

        order = epoch_order(self.n, self.seed, self.epoch)
        pad = self.total_size - len(order)
        order += (order * math.ceil(pad / max(1, len(order))))[:pad]
        return iter(order[self.rank:self.total_size:self.num_replicas])


class _LossModule(nn.Module):
    """DDP synchronises gradients of what `forward` returns; our detectors compute losses in `loss`."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return self.detector.loss(images, targets)  # type: ignore[operator]


class _DDPLoss:
    """The DDP-wrapped loss, times `scale` (this rank's share of the real images of the batch, see
    DistContext.set_batch), so that DDP's average over ranks is the whole batch's mean."""

    def __init__(self, ddp: nn.Module) -> None:
        self.ddp, self.scale = ddp, 1.0

    def __call__(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        losses = self.ddp(images, targets)
        return losses if self.scale == 1.0 else {k: v * self.scale for k, v in losses.items()}


@dataclass
class DistContext:
    """This process's place in the torchrun job, and the few collectives fit() needs."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    loss: _DDPLoss | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """Join the process group torchrun described in the environment."""
        from boxloop.predict.inference import resolve_device

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, local_rank, dev)

    def wrap(self, detector: Detector) -> Any:
        """The detector's loss, through DistributedDataParallel (unused parameters allowed: not every
        registry detector uses every parameter in every loss)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.loss = _DDPLoss(DistributedDataParallel(_LossModule(detector), device_ids=ids,  # type: ignore[arg-type]
                                                     find_unused_parameters=True))
        return self.loss

    def set_batch(self, n: int, batch_size: int, k: int) -> None:
        """Before the k-th batch of an epoch over n images: weight this rank's loss by its real
        (not padding) images over the batch's, times world. 1 for a full batch; in an epoch's short
        last batch a padding-only rank counts 0 and the others count what one process would."""
        start = k * batch_size
        real = max(0, min(batch_size, n - start))
        mine = sum(1 for j in range(batch_size // self.world) if start + self.rank + self.world * j < n)
        if self.loss is not None:
            self.loss.scale = self.world * mine / real if real else 0.0

    def local_batches(self, n: int, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
        """This rank's batches of `epoch` (batch_size / world images each)."""
        if batch_size % self.world:
            raise ValueError(f"batch size {batch_size} does not split over {self.world} processes; "
                             f"use a multiple of --nproc")
        sampler = EpochOrderSampler(n, self.world, self.rank, seed)
        sampler.set_epoch(epoch)
        mine, b = list(sampler), batch_size // self.world
        return [mine[i:i + b] for i in range(0, len(mine), b)]

    def mean(self, parts: dict[str, float]) -> dict[str, float]:
        """The logged losses averaged over ranks (what one process would log for the whole batch)."""
        keys = sorted(parts)
        t = torch.tensor([parts[k] for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        tdist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def broadcast(self, value: Any) -> Any:
        obj = [value]
        tdist.broadcast_object_list(obj, src=0)
        return obj[0]

    def barrier(self) -> None:
        tdist.barrier()


def write_spec(detector: Detector, train: Sequence[Sample], val: Sequence[Sample], class_names: Sequence[str],
               config: Any, out_dir: Path, stop_after: int | None = None, resume: bool = True) -> Path:
    """Everything a rank needs, in out_dir/ddp_spec.pt (written atomically)."""
    from boxloop.train.checkpoints import save_checkpoint

    out_dir = Path(out_dir)
    path = out_dir / SPEC_NAME
    save_checkpoint({"detector_config": dict(detector.config),
                     "state": detector.state_dict(),
                     "train": list(train), "val": list(val), "class_names": list(class_names),
                     "train_config": config.to_dict(), "out_dir": str(out_dir.resolve()),
                     "stop_after": stop_after, "resume": resume}, path)
    return path


def torchrun_command(spec: Path, nproc: int, torchrun_args: Sequence[str] = ()) -> list[str]:
    """`python -m torch.distributed.run` on this machine (--standalone) unless `torchrun_args` say
    where the others are (--nnodes, --node-rank, --rdzv-endpoint ...)."""
    where = list(torchrun_args) or ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
            "-m", "boxloop.train.ddp", str(spec)]


def fit_distributed(detector: Detector, train: Sequence[Sample], val: Sequence[Sample], class_names: Sequence[str],
                    config: Any, out_dir: str | Path, nproc: int, progress: bool = True, resume: bool = True,
                    stop_after: int | None = None, torchrun_args: Sequence[str] = (),
                    echo: Any = None) -> Any:
    """train.fit on `nproc` processes (torchrun); same checkpoints, same FitResult. The detector
    holds the best weights on return, as after fit()."""
    from boxloop.train.fit import FitResult
    from boxloop.train.checkpoints import load_checkpoint

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if config.batch_size % nproc:
        raise ValueError(f"--batch-size {config.batch_size} does not split over --nproc {nproc}; "
                         "use a multiple of --nproc (the batch size is the total over all processes)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_NAME).unlink(missing_ok=True)
    for stale in out_dir.glob(ERROR_NAME.format(rank="*")):
        stale.unlink(missing_ok=True)
    spec = write_spec(detector, train, val, class_names, config, out_dir, stop_after, resume)
    cmd = torchrun_command(spec, nproc, torchrun_args)
    shown = " ".join(shlex.quote(c) for c in cmd)
    if echo is not None:
        echo("running: " + shown)
    if torchrun_args:  # several machines: the others start the same job on the same spec
        print(f"boxloop: on every other machine run (its own --node-rank): {shown}", file=sys.stderr, flush=True)
    env = {**os.environ, "BOXLOOP_DDP_PROGRESS": "1" if progress else "0"}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not (out_dir / RESULT_NAME).exists():
        _raise_rank_error(out_dir)
        raise RuntimeError(f"distributed training failed (torchrun exit code {proc.returncode}); its output is "
                           f"above. Run the same command again to resume from {out_dir / 'last.pt'}")
    res = json.loads((out_dir / RESULT_NAME).read_text())
    spec.unlink(missing_ok=True)
    (out_dir / RESULT_NAME).unlink(missing_ok=True)
    best, last = out_dir / "best.pt", out_dir / "last.pt"
    if res["completed"] and best.exists():
        detector.load_state_dict(load_checkpoint(best)["model"])
    detector.eval()
    return FitResult(best, last, res["best_map50"], res["history"], res["step"], res["total_steps"],
                     res["completed"], res["stopped_early"])


def _raise_rank_error(out_dir: Path) -> None:
    """Raise the user error a rank reported (as one process would have raised it), if any."""
    from boxloop.train.checkpoints import TrainingDiverged

    errors = []
    for path in sorted(out_dir.glob(ERROR_NAME.format(rank="*"))):
        errors.append(json.loads(path.read_text()))
        path.unlink(missing_ok=True)
    if errors:
        err = errors[0]
        raise (TrainingDiverged if err["type"] == "TrainingDiverged" else ValueError)(err["message"])


def _rank_main(spec_path: str) -> None:
    """One torchrun process: rebuild the detector from the spec, fit with a DistContext."""
    from boxloop.detectors import create_detector
    from boxloop.train.config import TrainConfig
    from boxloop.train.fit import fit

    spec = torch.load(spec_path, map_location="cpu", weights_only=False)  # our own file, written just before
    config = TrainConfig.from_dict(spec["train_config"])
    dist = DistContext.from_env(config.device)
    try:
        cfg = dict(spec["detector_config"])
        name, num_classes = cfg.pop("name"), cfg.pop("num_classes")
        detector = create_detector(name, num_classes, **{**cfg, "pretrained_backbone": False})
        detector.load_state_dict(spec["state"])
        detector.config = dict(spec["detector_config"])  # as built by the caller (checkpoints say so)
        progress = os.environ.get("BOXLOOP_DDP_PROGRESS", "1") == "1"
        try:
            res = fit(detector, spec["train"], spec["val"], spec["class_names"], config, spec["out_dir"],
                      progress=progress, resume=spec["resume"], stop_after=spec["stop_after"], dist=dist)
        except ValueError as e:  # a user error (TrainingDiverged, ImageError, ...): the caller raises it again
            out = Path(spec["out_dir"]) / ERROR_NAME.format(rank=dist.rank)
            out.write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
            raise
        if dist.is_main:
            out = Path(spec["out_dir"]) / RESULT_NAME
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"best_map50": res.best_map50, "history": res.history, "step": res.step,
                                       "total_steps": res.total_steps, "completed": res.completed,
                                       "stopped_early": res.stopped_early, "world": dist.world}))
            os.replace(tmp, out)
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(sys.argv[1])
