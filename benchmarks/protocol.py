"""The protocol the learning-curve benchmarks share (label_efficiency.py, semi_supervised.py,
cold_start.py): datasets and their fixed test sets, seeds and shards, resumable steps, tables and
the JSON they write. One place, so that the three measure on the same splits in the same way.

Datasets (`--dataset`): a preset name, `synthetic`, or a PATH in any format boxloop reads.
    bccd      shared/datasets/bccd, a VOC root; the fixed test set is ImageSets/Main/test.txt (72 images)
    aquarium  shared/datasets/aquarium, YOLO with data.yaml (Roboflow "Aquarium Combined", CC BY 4.0,
              attribution: Roboflow; see its SOURCE.md): the pool is train/ (448 images), the fixed
              test set valid/ + test/ (190 images; the published 63-image test split alone is too noisy)
    PATH      a VOC root with ImageSets/Main/test.txt, or a folder of split folders (train/ and
              valid/, val/ or test/), each in VOC, COCO (one .json) or YOLO (images/ + labels/, the
              class names in data.yaml or classes.txt at the top): train/ is the pool, every other
              split is the fixed test set. The format is boxloop's own detection
              (boxloop.formats.detect_format) unless --dataset-format names it.
shared/ is looked for beside the repository and above it (git worktrees); absent, the benchmark says
so and exits 0. A split layout is merged once into WORKDIR/dataset/<name>/ (one COCO file keyed by
the path under the dataset root, and test.txt); the images are read where they are.

Rare classes: those present in the fewest pool images (BCCD keeps the WBC and Platelets of the
earlier runs). A class that has no box in the test set is reported in a warning: its AP is left out
of mAP50 (boxloop.metrics.evaluate gives it None), never counted as 0.

Written by hand: the presets, the split discovery and merge, the warnings, shard balancing, the
step cache, the Markdown table and the strict JSON. boxloop.formats reads and writes the labels.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


# -- datasets ----------------------------------------------------------------------------------------

def shared_datasets() -> Path:
    """shared/datasets beside the repository or above it (a git worktree lives one folder deeper);
    the first candidate when none exists, so that messages name the expected place."""
    candidates = [p / "shared" / "datasets" for p in HERE.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


@dataclasses.dataclass(frozen=True)
class DatasetPreset:
    """A dataset the benchmarks know by name: where it lies and which classes count as rare."""

    folder: str  # under shared/datasets
    rare_classes: tuple[str, ...] | None = None  # None: the `rare_count` classes in the fewest pool images
    rare_count: int = 2


DATASETS: dict[str, DatasetPreset] = {
    "bccd": DatasetPreset("bccd", rare_classes=("WBC", "Platelets")),  # as in every earlier run
    "aquarium": DatasetPreset("aquarium", rare_count=2),  # jellyfish (32 pool images), starfish (37)
}
FORMATS_READ = ("voc", "coco", "yolo")
FORMAT_HELP = ("voc (Annotations/*.xml), coco (one .json file), yolo (labels/*.txt with data.yaml or "
               "classes.txt)")
POOL_SPLIT = "train"
TEST_SPLITS = ("valid", "val", "test")


class DatasetError(ValueError):
    """A --dataset the benchmarks cannot use; the message says what to pass instead."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where the images, labels and fixed test list are, which classes count as rare, and what the
    user should know about the splits (warnings)."""

    name: str
    images: Path
    annotations: Path
    test_list: Path
    rare_classes: tuple[str, ...]
    fmt: str | None = None  # None: boxloop detects it
    pool_images_per_class: Mapping[str, int] = dataclasses.field(default_factory=dict)
    test_images: int = 0
    pool_images: int = 0
    warnings: tuple[str, ...] = ()
    source: str = ""

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "images": str(self.images),
                "annotations": str(self.annotations), "format": self.fmt, "test_list": str(self.test_list),
                "pool_images": self.pool_images, "test_images": self.test_images,
                "pool_images_per_class": dict(self.pool_images_per_class),
                "rare_classes": list(self.rare_classes), "warnings": list(self.warnings)}


def dataset_path(dataset: str) -> Path:
    """A preset name's folder, or the path as given."""
    return shared_datasets() / DATASETS[dataset].folder if dataset in DATASETS else Path(dataset)


def preset_of(dataset: str) -> DatasetPreset:
    name = dataset if dataset in DATASETS else Path(dataset).name
    return DATASETS.get(name, DatasetPreset(name, rare_classes=None))


def rarest(counts: Mapping[str, int], k: int) -> tuple[str, ...]:
    """The k classes present in the fewest pool images (ties by name)."""
    return tuple(sorted(counts, key=lambda c: (counts[c], c))[:max(1, k)])


def _split_source(folder: Path, fmt: str | None) -> tuple[str, Path, Path]:
    """(format, annotations, images root) of one split folder, by boxloop's detection or `fmt`."""
    from boxloop.formats import FormatError, detect_format

    if fmt is None:
        try:
            fmt = detect_format(folder)
        except FormatError as e:
            raise undetectable(folder, e.problem) from e
    images = next((folder / n for n in ("images", "JPEGImages") if (folder / n).is_dir()), folder)
    if fmt == "yolo":
        return fmt, folder / "labels" if (folder / "labels").is_dir() else folder, images
    if fmt == "voc":
        return fmt, folder / "Annotations" if (folder / "Annotations").is_dir() else folder, images
    jsons = sorted(folder.glob("*.json"))
    if fmt != "coco" or len(jsons) != 1:
        raise undetectable(folder, f"as {fmt}: expected one .json file here, found {len(jsons)}")
    return fmt, jsons[0], images


def undetectable(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path}: cannot tell the label format ({problem}). The benchmarks read {FORMAT_HELP}; "
                        f"name it with --dataset-format {{{','.join(FORMATS_READ)}}}")


def _merge_splits(root: Path, splits: Mapping[str, Path], fmt: str | None, out: Path) -> tuple[Path, Path]:
    """Every split's labels in one COCO file keyed by the path under `root`, and the test list (every
    split but train). Written atomically; the images stay where they are."""
    from boxloop import formats
    from boxloop.formats.yolo import NAME_FILES, read_class_names

    # data.yaml / classes.txt at the top (YOLO); only the dataset's own, never one in the folder above
    found = read_class_names(root) if any((root / n).is_file() for n in NAME_FILES) else None
    classes: list[str] | None = [n for _, n in sorted(found[0].items())] if found else None
    merged, test = [], []
    for split, folder in splits.items():
        f, ann, images = _split_source(folder, fmt)
        res = formats.load(f, ann, images, classes)
        if classes is None:
            classes = list(res.classes)
        for key, a in res.annotations.items():
            rel = (images / key).relative_to(root).as_posix()
            merged.append(dataclasses.replace(a, image=rel))
            if split != POOL_SPLIT:
                test.append(rel.rsplit(".", 1)[0])
    out.mkdir(parents=True, exist_ok=True)
    ann_path, test_path = out / "annotations.json", out / "test.txt"
    tmp = out / f"annotations.{os.getpid()}.json"
    formats.dump("coco", merged, classes or [], tmp)
    os.replace(tmp, ann_path)
    write_text(test_path, "\n".join(sorted(test)) + "\n")
    return ann_path, test_path


def prepare_dataset(dataset: str, workdir: Path, synthetic_images: int = 60, synthetic_size: int = 96,
                    fmt: str | None = None) -> DatasetSpec | None:
    """The dataset's spec, its pool counts and warnings; None when a preset's folder is missing (the
    caller skips). DatasetError when a PATH is missing or cannot be used (no test split, format not
    detected)."""
    if fmt is not None and fmt not in FORMATS_READ:
        raise DatasetError(f"--dataset-format {fmt!r}: use one of {', '.join(FORMATS_READ)}")
    if dataset == "synthetic":
        from boxloop.synthetic import make_dataset

        root = workdir / "synthetic_data"
        test_list = root / "test.txt"
        if not test_list.exists():
            anns = make_dataset(root, n_images=synthetic_images, image_size=synthetic_size, seed=0)
            stems = [Path(a.image).stem for i, a in enumerate(anns) if i % 5 == 0]
            test_list.write_text("\n".join(stems) + "\n")
        return _finish(DatasetSpec("synthetic", root / "images", root / "annotations", test_list, ("triangle",),
                                   source="boxloop.synthetic"), None)
    root = dataset_path(dataset)
    if not root.is_dir():
        if dataset in DATASETS:
            return None  # shared/ is not on this machine: the caller skips
        raise DatasetError(f"{root}: no such folder (pass a dataset folder, {', '.join(DATASETS)} or synthetic)")
    preset = preset_of(dataset)
    name = dataset if dataset in DATASETS else root.name
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():  # a VOC root (BCCD)
        test_list = root / "ImageSets" / "Main" / "test.txt"
        if not test_list.is_file():
            raise DatasetError(f"{test_list} is missing: the fixed test list is needed for a comparable number")
        spec = DatasetSpec(name, root / "JPEGImages", root / "Annotations", test_list, (), fmt, source=str(root))
        return _finish(spec, preset)
    splits = {n: root / n for n in (POOL_SPLIT, *TEST_SPLITS) if (root / n).is_dir()}
    if POOL_SPLIT not in splits or len(splits) < 2:
        from boxloop.formats import FormatError, detect_format

        try:
            detected = fmt or detect_format(root)
        except FormatError as e:
            raise undetectable(root, e.problem) from e
        raise DatasetError(f"{root}: {detected} labels, but no fixed test split: give a VOC root with "
                           "ImageSets/Main/test.txt, or split folders train/ and valid/ (or val/, test/)")
    ann, test_list = _merge_splits(root, splits, fmt, workdir / "dataset" / name)
    spec = DatasetSpec(name, root, ann, test_list, (), "coco", source=f"{root} (pool: train/; test: "
                       + " + ".join(f"{s}/" for s in splits if s != POOL_SPLIT) + ")")
    return _finish(spec, preset)


def _finish(spec: DatasetSpec, preset: DatasetPreset | None) -> DatasetSpec:
    """Pool counts per class, the rare classes and the warnings about the test set."""
    from boxloop import formats
    from boxloop.images import list_images
    from boxloop.project import resolve_test_list

    res = formats.load(spec.fmt, spec.annotations, spec.images)
    truth = res.annotations
    test = set(resolve_test_list(spec.test_list, list_images(spec.images)))
    used = sorted({c for a in truth.values() for c in a.labels})
    pool = [k for k in truth if k not in test]
    counts = {c: sum(c in truth[k].labels for k in pool) for c in used}
    in_test = {c for k in test if k in truth for c in truth[k].labels}
    warnings = tuple(f"{spec.name}: the test set has no {c!r} box: its AP is left out of mAP50 (not counted as 0)"
                     for c in dict.fromkeys([*res.classes, *used]) if c not in in_test)
    rare = spec.rare_classes or (preset and preset.rare_classes) or rarest(counts, preset.rare_count if preset else 2)
    return dataclasses.replace(spec, rare_classes=tuple(rare), pool_images_per_class=counts, test_images=len(test),
                               pool_images=len(pool), warnings=warnings)


def add_dataset_args(ap: argparse.ArgumentParser, synthetic_images: int = 60, synthetic_size: int = 96) -> None:
    """--dataset, --dataset-format and the synthetic set's size: the same flags in every benchmark."""
    ap.add_argument("--dataset", default=None,
                    help=f"{', '.join(DATASETS)} (shared/datasets), synthetic (a smoke run), or a PATH: a VOC root "
                         "with ImageSets/Main/test.txt, or split folders train/ (the pool) + valid/ val/ test/ "
                         "(the fixed test set) in VOC, COCO or YOLO (default: the preset's dataset, else bccd)")
    ap.add_argument("--dataset-format", choices=FORMATS_READ, default=None,
                    help="the label format of --dataset PATH when boxloop cannot detect it")
    ap.add_argument("--synthetic-images", type=int, default=synthetic_images)
    ap.add_argument("--synthetic-size", type=int, default=synthetic_size)


def choose_preset(args: argparse.Namespace, presets: Mapping[str, Any], default: str = "cpu") -> str:
    """The settings preset: `synthetic` for --dataset synthetic; a dataset's own preset when the
    benchmark has one (--dataset aquarium = --preset aquarium); `bccd` is the cpu preset. Sets
    args.dataset to the preset's dataset when none was given."""
    preset = getattr(args, "preset", None)
    if args.dataset is None:
        args.dataset = preset if preset in DATASETS else "bccd"
    if args.dataset == "synthetic":
        return "synthetic"
    if preset is None:
        preset = args.dataset if args.dataset in presets and args.dataset in DATASETS else default
    return default if preset == "bccd" else preset


def dataset_or_skip(args: argparse.Namespace) -> DatasetSpec | None:
    """The dataset spec (torch threads set as asked), or None after saying why the run is skipped;
    warnings printed; an unusable --dataset exits with its message."""
    try:
        spec = prepare_dataset(args.dataset, args.workdir, args.synthetic_images, args.synthetic_size,
                               getattr(args, "dataset_format", None))
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    if spec is None:
        print(f"dataset {args.dataset} not found at {dataset_path(args.dataset)}; skipping. Pass --dataset PATH "
              f"(a VOC root, or train/ + valid/ split folders), a preset ({', '.join(DATASETS)}) or synthetic.")
        return None
    for w in spec.warnings:
        print(f"warning: {w}", flush=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return spec


# -- settings, seeds and shards ----------------------------------------------------------------------

def resolve(args: argparse.Namespace, preset: Mapping[str, Any]) -> argparse.Namespace:
    """Flags left at None take the preset's value."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must be K/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= k < n:
        raise SystemExit(f"--shard {text}: K must lie in 0..N-1")
    return k, n


def balance(items: Sequence[T], cost: Callable[[T], float], shards: int,
            fixed: Mapping[T, int] | None = None) -> list[list[T]]:
    """Items per shard: `fixed` ones where they are pinned, the rest longest first onto the least
    loaded shard (the LPT rule), each shard's list in the order of `items`."""
    out: list[list[T]] = [[] for _ in range(shards)]
    load = [0.0] * shards
    fixed = fixed or {}
    for it in items:
        if it in fixed:
            out[fixed[it]].append(it)
            load[fixed[it]] += cost(it)
    for it in sorted((i for i in items if i not in fixed), key=lambda i: -cost(i)):
        k = int(np.argmin(load))
        out[k].append(it)
        load[k] += cost(it)
    order = {it: n for n, it in enumerate(items)}
    return [sorted(s, key=order.__getitem__) for s in out]


def machine(device: str = "auto") -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": device}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command() -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# -- resumable steps ---------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl): two shards never build or copy the same thing at once; the
    lock goes with the process, so a killed shard leaves none behind."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A finished step's JSON: re-running the benchmark skips it."""
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    value = finite(make())
    value.setdefault("seconds", round(time.perf_counter() - t0, 1))
    write_json(path, value)
    return value


def log_timing(workdir: Path, job: str, seconds: float, shard: str, threads: int | None) -> None:
    """One line per job and call in WORKDIR/timings.jsonl: the wall time of a run split over processes."""
    with open(workdir / "timings.jsonl", "a") as f:
        f.write(json.dumps({"job": job, "seconds": round(seconds, 1), "shard": shard, "threads": threads,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def timings(workdir: Path) -> dict[str, Any]:
    """Seconds spent per job (summed over the calls that worked on it) and per shard."""
    path = workdir / "timings.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    per_job: dict[str, float] = {}
    per_shard: dict[str, float] = {}
    for r in rows:
        per_job[r["job"]] = per_job.get(r["job"], 0.0) + r["seconds"]
        per_shard[r["shard"]] = per_shard.get(r["shard"], 0.0) + r["seconds"]
    return {"per_job_seconds": per_job, "per_shard_minutes": {k: round(v / 60, 1) for k, v in per_shard.items()},
            "total_minutes": round(sum(per_job.values()) / 60, 1),
            "first_finished": rows[0]["finished"], "last_finished": rows[-1]["finished"]}


def test_sensitivity(project_dir: Path, image_size: int, device: str) -> dict[str, Any]:
    """How far one test image moves the project's current model's mAP50, as the demo reports it
    (compare.leave_one_out_map50), cached beside the project."""
    from boxloop.cli.demo import demo_test_sensitivity

    return cached(project_dir / "test_sensitivity.json", lambda: demo_test_sensitivity(project_dir, image_size, device))


# -- tables and JSON ---------------------------------------------------------------------------------

def finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively, so the JSON is strict (tables use NaN for 'none')."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader (another shard) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, doc: Any) -> None:
    write_text(path, json.dumps(finite(doc), indent=1, allow_nan=False, default=str))


def markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table that also reads as plain text in a terminal."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"
