"""The options several `boxloop` commands share, and their reading into boxloop's own objects.

typer parses the command line; written by hand here are the shared option declarations (one
Annotated type each, so that every command words an option the same way), --detector-option
KEY=VALUE pairs read as YAML scalars (pyyaml), `loop_config` (the loop's config from the options,
by keyword, with what the user left unset from `defaults.run_defaults`: the one place options map
onto LoopConfig's groups), the detector a command opens from
--checkpoint or a project, Ray scoring from --workers/--ray-address, and the check of a number in
(0, 1). Bad values raise typer.BadParameter (exit code 2) or ValueError (boxloop.cli.errors: one
red line, exit code 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from boxloop.defaults import BATCH_SIZE, CPU, GENERIC_RECIPE, GPU, OPTIMIZERS, RECIPES, UNRECORDED_IMAGE_SIZE
from boxloop.formats import FORMATS
from boxloop.strategies import BOX_STRATEGIES, IMAGE_STRATEGIES, INITIAL_STRATEGIES

if TYPE_CHECKING:
    from boxloop.loop.config import LoopConfig

StrictOpt = Annotated[bool, typer.Option("--strict", help="An image that is truncated, cannot be decoded or changed under its labels is an error, not left out with a warning.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace files already in --out (otherwise a clash stops before anything is written).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="fcos_lite (default: the CPU-first one), fcos (with IoU branch), faster_rcnn or retinanet.")]
BackboneOpt = Annotated[str, typer.Option(help="efficientnet_lite0 (offline ImageNet weights), resnet50, mobilenet_v3_large.")]
EpochsOpt = Annotated[Optional[int], typer.Option(min=1, help=f"Training epochs (default {CPU.epochs}, and at least {CPU.min_steps} steps, unless --steps).")]
StepsOpt = Annotated[Optional[int], typer.Option(min=1, help="Training steps instead of epochs.")]
SizeOpt = Annotated[Optional[int], typer.Option(min=1, help="Longer image side for training and prediction, pixels "
                                                    f"(default: {CPU.image_size} on a CPU, {GPU.image_size} on a GPU; "
                                                    "`train` chooses it from the labelled boxes, up to "
                                                    f"{CPU.max_image_size} on a CPU, {GPU.max_image_size} on a GPU).")]
BatchOpt = Annotated[Optional[int], typer.Option(min=1, help=f"Images per batch (default {BATCH_SIZE}).")]


def _device(value: str) -> str:
    """--device checked when parsed: 'cuda' on a machine without a GPU is one line, before any work."""
    if value not in ("auto", "cpu"):
        from boxloop.predict.inference import resolve_device

        try:
            resolve_device(value)
        except (RuntimeError, ValueError) as e:
            raise typer.BadParameter(str(e)) from None
    return value


DeviceOpt = Annotated[str, typer.Option(callback=_device, help="auto, cpu or cuda.")]
SeedOpt = Annotated[int, typer.Option(help="Seed: training, selection and splits.")]
NoPretrainedOpt = Annotated[bool, typer.Option("--no-pretrained", help="Random backbone initialisation.")]
DetectorOpt = Annotated[Optional[list[str]], typer.Option(
    "--detector-option", help="A detector builder option KEY=VALUE (repeatable), e.g. trainable_layers=2.")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="Run on Ray with this many workers (a local Ray unless --ray-address); needs boxloop[ray].")]
RayAddressOpt = Annotated[Optional[str], typer.Option(help="Join this Ray cluster (auto, or HEAD:6379; run on one of its nodes) instead of starting a local Ray.")]

# Help texts from what runs (boxloop.formats, the strategy registry, defaults.py): they cannot drift.
FORMATS_HELP = f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}"  # init, export, import, query, simulate
STRATEGY_HELP = f"{', '.join(IMAGE_STRATEGIES)} (boxes: {', '.join(BOX_STRATEGIES)})."
INITIAL_STRATEGY_HELP = (f"How the seed set is chosen: {' or '.join(INITIAL_STRATEGIES)} "
                         "(typical: TypiClust in the pretrained backbone's embedding).")
LR_HELP = ("Learning rate (default: the model's recipe; "
           + ", ".join(f"{m} {lr} with {opt}" for m, (opt, lr) in RECIPES.items())
           + f", others {GENERIC_RECIPE[1]} with {GENERIC_RECIPE[0]}).")
OPTIMIZER_HELP = f"{' or '.join(OPTIMIZERS)} (default: the model's recipe)."

def check_detector_options(model: str, options: dict[str, Any]) -> None:
    """Refuse an unknown model or option before any work (the error lists the valid ones)."""
    from boxloop.detectors import check_options

    check_options(model, options)


def detector_options(pairs: list[str] | None) -> dict[str, Any]:
    """--detector-option KEY=VALUE pairs -> builder keyword arguments (values read as YAML scalars)."""
    from boxloop.formats import load_yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--detector-option")
        out[key.strip()] = load_yaml(value, f"--detector-option {key.strip()}")
    return out


def fill_defaults(d: Any, model: str | None, image_size: int | None, batch_size: int | None
                  ) -> tuple[str, int, int]:
    """(model, image size, batch size) with what the user left unset (None, never 0) from `d`
    (defaults.run_defaults)."""
    return (d.detector if model is None else model, d.image_size if image_size is None else image_size,
            d.batch_size if batch_size is None else batch_size)


def loop_config(*, model: str | None = None, backbone: str = "efficientnet_lite0", epochs: int | None = None,
                steps: int | None = None, image_size: int | None = None, batch_size: int | None = None,
                device: str = "auto", seed: int = 0, no_pretrained: bool = False,
                detector_option: list[str] | None = None, **settings: Any) -> LoopConfig:
    """The loop's config from CLI options, the one place they map onto it. The keywords are the shared
    options as the commands name them (`detector_option`: the --detector-option KEY=VALUE pairs);
    `settings`: any other LoopConfig setting by its name (strategy=..., budget=..., semi=...). What
    the user left unset comes from `run_defaults(device)`."""
    from boxloop.defaults import run_defaults
    from boxloop.loop.config import LoopConfig

    d = run_defaults(device)
    model, image_size, batch_size = fill_defaults(d, model, image_size, batch_size)
    options = detector_options(detector_option)
    check_detector_options(model, {"backbone": backbone, **options})
    if epochs is not None and steps is not None:
        raise typer.BadParameter("pass --epochs or --steps, not both", param_hint="--epochs")
    if epochs is None and steps is None:  # the default schedule: epochs, with a floor in steps
        epochs = d.epochs
        settings.setdefault("min_steps", d.min_steps)
    return LoopConfig.make(model=model, backbone=backbone, pretrained_backbone=not no_pretrained,
                           detector_options=options, epochs=epochs, steps=steps, image_size=image_size,
                           batch_size=batch_size, device=device, seed=seed, **settings)


def project_image_size(project: Any, image_size: int | None, device: str = "auto") -> int:
    """--image-size where given (it always wins), else the project's input size: chosen from its
    labelled boxes and recorded (boxloop.loop.input_size), printed with the reason."""
    if image_size is not None:
        return image_size
    from boxloop.cli.output import print_input_size
    from boxloop.loop.input_size import project_input_size

    choice = project_input_size(project, device)
    print_input_size(choice.to_dict())
    return choice.image_size


def open_detector(project: Path | None, checkpoint: Path | None, device: str):
    """(detector, class names, image size, checkpoint path) from --checkpoint or the project's current model."""
    from boxloop.train.checkpoints import load_detector

    if checkpoint is None:
        if project is None:
            raise typer.BadParameter("give a PROJECT or --checkpoint PATH", param_hint="--checkpoint")
        from boxloop.loop.model import current_checkpoint
        from boxloop.store import Project

        with Project.open(project) as proj:
            checkpoint = current_checkpoint(proj)
            classes = proj.classes
    else:
        classes = None
        if project is not None:
            from boxloop.store import Project

            with Project.open(project) as proj:
                classes = proj.classes
    det, names, meta = load_detector(checkpoint, expect_classes=classes, device="cpu")
    image_size = int((meta.get("train_config") or {}).get("image_size", UNRECORDED_IMAGE_SIZE))
    return det, names, image_size, checkpoint


def ray_scoring(workers: int | None, ray_address: str | None, device: str):  # -> ray_scoring.RayScoring | None
    """--workers/--ray-address: score on Ray actors (boxloop.scale.ray_scoring); None (neither given): in this process."""
    if workers is None and ray_address is None:
        return None
    from boxloop.scale.ray_scoring import RayScoring

    return RayScoring.from_cli(workers, ray_address, device)


def name_list(text: str, option: str) -> list[str]:
    """A comma-separated list of names, at least one (--strategies "" is a usage error, not an IndexError)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise typer.BadParameter("give at least one name, comma-separated (e.g. random,localization_aware)",
                                 param_hint=option)
    return names


def unit_float(text: str, name: str) -> float:
    """A number in (0, 1) given as text (`name`: the option, for the message)."""
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number in (0, 1) or 'auto', got {text!r}") from None
    if not 0 < v < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {text}")
    return v
