"""One optimiser step of fit(): the optimiser, schedule and gradient scaler built once per fit(),
and the step over a batch in micro-batches.

torch does the optimisation (SGD/AdamW, LambdaLR over `TrainConfig.lr_factor`, autocast,
GradScaler, clip_grad_norm_). Written by hand: the choice of those from the TrainConfig (bfloat16
autocast where the GPU has it, else float16 with a scaler), the loss averaged over micro-batches
as gradient accumulation, the refusal of a non-finite loss (TrainingDiverged), and halving the
micro-batch on CUDA out-of-memory. boxloop.train.fit's fit() loop calls these; it names the step
`train._train_step`, where a test may wrap it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from boxloop.train.checkpoints import TrainingDiverged
from boxloop.detectors.base import Detector

if TYPE_CHECKING:
    from boxloop.train.config import TrainConfig

log = logging.getLogger("boxloop")

Images = list[torch.Tensor]
Targets = list[dict[str, torch.Tensor]]


@dataclass
class Optimisation:
    """What an optimiser step needs besides the batch, built once per fit(). `micro`: the micro-batch
    size, halved on CUDA out-of-memory; `loss_fn`: detector.loss, or its DDP-wrapped form."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    grad_clip: float | None
    micro: int
    loss_fn: Any = None


def build_optimisation(detector: Detector, config: TrainConfig, device: torch.device, total_steps: int) -> Optimisation:
    """The optimiser, schedule and scaler `config` asks for, over the detector's trainable parameters."""
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    params = [p for p in detector.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                           weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: config.lr_factor(s, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return Optimisation(optimizer, scheduler, scaler, device, use_amp, amp_dtype, config.grad_clip, config.batch_size)


def train_step(detector: Detector, opt: Optimisation, images: Images, targets: Targets) -> dict[str, float]:
    """One optimiser step over the batch, in micro-batches of opt.micro (halved on CUDA OOM)."""
    device = opt.device
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "weights")} for t in targets]
    n = len(images)
    while True:
        opt.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        try:
            for i in range(0, n, opt.micro):
                ims, tgs = images[i:i + opt.micro], targets[i:i + opt.micro]
                with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
                    losses = opt.loss_fn(ims, tgs)
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise TrainingDiverged(f"training loss is {float(total)}; lower the learning rate or check the boxes")
                frac = len(ims) / n
                opt.scaler.scale(total * frac).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * frac
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * frac
            break
        except torch.OutOfMemoryError:
            if opt.micro == 1:
                raise RuntimeError("out of GPU memory on a single image; lower image_size or train on the cpu")
            opt.micro = max(1, opt.micro // 2)
            opt.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory: batch halved to %d (gradients accumulated over the batch), retrying",
                        opt.micro)
    if opt.grad_clip is not None:
        opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(detector.parameters(), opt.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return sums
