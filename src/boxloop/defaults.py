"""The defaults, in one place: detector, image size, batch size, optimizer and learning rate (by
machine and model), and CertaintySSOD's pseudo-label settings.

Every entry point (train, query, simulate, autolabel, the loop's config) asks `run_defaults` for
what the user did not set (`boxloop.loop.input_size` may raise the image size within `max_image_size`
when the labelled objects are small), so a CPU user and a GPU user each get what serves their machine, and
the numbers cannot drift apart between commands again (they had been 480, 320 and 512).

Chosen by measurement (benchmarks/cpu_speed.py, benchmarks/train_bccd.py, 2 CPU cores): on a CPU,
fcos_lite at 320 px trains and predicts several times faster than fcos and keeps BCCD's mAP50; a
batch of 8 keeps the per-step overhead small without hurting the few-image rounds of a loop. On a
GPU the image size stays at 480 px, where the former default worked well and time is not short.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DETECTOR", "BATCH_SIZE", "RunDefaults", "CPU", "GPU", "run_defaults", "training_recipe", "GENERIC_RECIPE",
           "OPTIMIZERS", "RECIPES", "UNRECORDED_IMAGE_SIZE", "Certainty", "CERTAINTY"]

DETECTOR = "fcos_lite"
BATCH_SIZE = 8  # training and prediction, CPU and GPU alike


@dataclass(frozen=True)
class RunDefaults:
    detector: str
    image_size: int
    batch_size: int
    device: str  # the device these were chosen for: "cpu" or "cuda"
    # the schedule when the user gives neither epochs nor steps: `epochs`, but at least `min_steps`
    # (a 200-image project has 17 steps an epoch; fcos_lite's head needs several hundred updates:
    # on BCCD 465 steps of 8 images reached test mAP50 0.87). 500, not 600: `boxloop train` on 200
    # BCCD images took 5.05 min with 600 on 2 idle cores, over the 5 minutes a first model may take
    epochs: int = 12
    min_steps: int = 500
    # the largest input size `boxloop.loop.input_size` may choose from the labelled boxes when they are
    # small: the CPU cost per image grows as the square of the size, so 512 px costs 2.6x 320 px
    # (0.069 s -> about 0.18 s per training image at 1 thread, benchmarks/README.md); a GPU has room
    max_image_size: int = 512


CPU = RunDefaults(detector=DETECTOR, image_size=320, batch_size=BATCH_SIZE, device="cpu", max_image_size=512)
GPU = RunDefaults(detector=DETECTOR, image_size=480, batch_size=BATCH_SIZE, device="cuda", max_image_size=800)
# What a checkpoint that recorded no image size was trained at (TrainConfig's default before issue 30).
UNRECORDED_IMAGE_SIZE = 512


def run_defaults(device: str = "auto") -> RunDefaults:
    """The defaults for `device` ("auto", "cpu" or "cuda"); "auto" means CUDA when it is there."""
    if device == "cpu":
        return CPU
    if device == "cuda":
        return GPU
    import torch

    return GPU if torch.cuda.is_available() else CPU


# optimizer and learning rate by detector, where the user sets neither. fcos_lite's randomly
# initialised light head learnt faster with AdamW at 0.002 than with SGD at 0.01 on BCCD (30 epochs:
# test mAP50 0.803 against 0.792 with more backbone levels training); the others keep SGD.
# GENERIC_RECIPE is also TrainConfig's own default: fit() knows no model.
OPTIMIZERS = ("sgd", "adamw")
USUAL_LR = {"sgd": 0.01, "adamw": 0.001}  # an optimizer's rate when the user names it without one
GENERIC_RECIPE: tuple[str, float] = ("sgd", USUAL_LR["sgd"])
RECIPES: dict[str, tuple[str, float]] = {"fcos_lite": ("adamw", 0.002)}


def training_recipe(model: str, optimizer: str | None = None, lr: float | None = None) -> tuple[str, float]:
    """(optimizer, learning rate) that `model` trains with: its recipe where `optimizer` / `lr` are
    None; another optimizer without `lr` takes that optimizer's usual rate (SGD 0.01, else 0.001)."""
    recipe_optimizer, recipe_lr = RECIPES.get(model, GENERIC_RECIPE)
    if lr is None:
        lr = recipe_lr if optimizer in (None, recipe_optimizer) else USUAL_LR.get(optimizer, USUAL_LR["adamw"])
    return optimizer or recipe_optimizer, float(lr)


@dataclass(frozen=True)
class Certainty:
    """CertaintySSOD's pseudo-label settings [tau=0.7, gamma1=0.05, gamma2=0.6, tau_m clipped to
    [0.4, 0.9]]: the one type the loop (LoopConfig.pseudo), `boxloop train --semi` (SemiConfig) and
    the class-wise thresholds (semi.pseudo.ClasswiseThresholds) take them from. Checked where used."""

    tau: float = 0.7
    gamma1: float = 0.05
    gamma2: float = 0.6
    clip: tuple[float, float] = (0.4, 0.9)
    dynamic_threshold: bool = True
    reweight: bool = True
    certainty: bool = True


CERTAINTY = Certainty()
