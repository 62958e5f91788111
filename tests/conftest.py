"""Shared fixtures: a small synthetic dataset (generated in code, no network), a project made from
it, and the BCCD dataset path (skips cleanly when ../shared/datasets/bccd is absent).

    def test_x(synthetic_dataset):      # SyntheticData: .images, .annotations_dir, .annotations, ...
    def test_y(make_synthetic):         # make_synthetic(n_images=8, image_size=64, seed=1)
    def test_z(synthetic_project):      # an open store.Project over synthetic_dataset (fresh per test)
    def test_w(bccd_dir):               # Path to the VOC root (JPEGImages/, Annotations/, ImageSets/)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from boxloop.structures import Annotation

BCCD_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"


@dataclass(frozen=True)
class SyntheticData:
    """A generated dataset on disk and the generator's own truth about it."""

    root: Path  # holds images/ and annotations/
    images: Path  # the images folder (pass as --images)
    annotations_dir: Path  # VOC XML, one per image (pass as --annotations)
    annotations: dict[str, Annotation]  # relative image path -> ground truth
    classes: list[str]
    counts: dict = field(default_factory=dict)  # images, negative_images, boxes, boxes_per_class


def _generate(root: Path, **kw) -> SyntheticData:
    from boxloop.synthetic import CLASSES, count, make_dataset

    anns = make_dataset(root, **kw)
    return SyntheticData(root=root, images=root / "images", annotations_dir=root / "annotations",
                         annotations={a.image: a for a in anns}, classes=list(CLASSES), counts=count(anns))


@pytest.fixture(scope="session")
def make_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SyntheticData]:
    """Factory: make_synthetic(n_images=40, image_size=96, seed=0, negative_fraction=0.1, ...).
    Same arguments, same (cached) dataset within a session; treat its files as read-only."""
    cache: dict[tuple, SyntheticData] = {}

    def make(n_images: int = 40, image_size: int = 96, seed: int = 0, **kw) -> SyntheticData:
        key = (n_images, image_size, seed, tuple(sorted(kw.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"synthetic_{n_images}_{image_size}_{seed}")
            cache[key] = _generate(root, n_images=n_images, image_size=image_size, seed=seed, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synthetic_dataset(make_synthetic: Callable[..., SyntheticData]) -> SyntheticData:
    """40 images of 96 px, 3 classes (triangle rare), 4 negatives, seed 0. Read-only."""
    return make_synthetic()


@pytest.fixture()
def synthetic_project(synthetic_dataset: SyntheticData, tmp_path: Path) -> Iterator:
    """A fresh project over `synthetic_dataset`: all images labelled, 20% test, seed 0."""
    from boxloop.project import init_project

    project = init_project(tmp_path / "project", synthetic_dataset.images, synthetic_dataset.annotations_dir,
                           test_fraction=0.2, seed=0, progress=False)
    yield project
    project.close()


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """../shared/datasets/bccd (VOC layout), or skip."""
    if not (BCCD_DIR / "Annotations").is_dir() or not (BCCD_DIR / "JPEGImages").is_dir():
        pytest.skip("../shared/datasets/bccd is absent")
    return BCCD_DIR


@pytest.fixture(scope="module")
def ray_local() -> Iterator:
    """A local Ray with 2 CPUs for a test module (boxloop's Ray paths use a Ray already running; it
    is shut down after the module, so no idle Ray sits beside the other tests); skips when Ray is
    not installed (`pip install -e '.[dev]'` installs it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for every test: tiny models on a shared 2-core machine run faster so (with
    more threads than free cores, OpenMP barriers spin)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
