"""A synthetic detection dataset for the demo, the tests and the benchmarks: coloured shapes on a
noisy background, deterministic by seed, no network.

Written by hand: the scene sampler (object count, sizes from small to large, a rare class, negative
images, overlap control) and the exact boxes of each drawn shape. Pillow draws and writes the PNGs,
numpy makes the noise, and `boxloop.formats.dump('voc', ...)` writes the labels, so the dataset is
read back through the same code a user's data goes through.

Classes: 'circle' (warm reds/oranges), 'square' (blues), and the rare 'triangle' (greens, about
`rare_fraction` of objects). Shapes are solid and high-contrast against a mid-grey textured
background so a tiny detector learns them in a few dozen steps at 64-128 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from boxloop.structures import Annotation, Boxes

__all__ = ["CLASSES", "make_dataset", "make_scene"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
_PALETTES = {  # per class: a base RGB, jittered per object
    "circle": (225, 60, 40),
    "square": (40, 80, 230),
    "triangle": (40, 200, 60),
}


def _sample_objects(rng: np.random.Generator, size: int, n_objects: int, rare_fraction: float,
                    max_iou: float = 0.1) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Non-overlapping-ish boxes with sizes from ~8% to ~55% of the image side."""
    p_rare = rare_fraction
    probs = np.array([(1 - p_rare) / 2, (1 - p_rare) / 2, p_rare])
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    lo, hi = max(6, int(round(0.08 * size))), max(8, int(round(0.55 * size)))
    for _ in range(n_objects):
        for _attempt in range(30):
            # log-uniform sizes: as many small objects as large ones
            side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
            x1 = int(rng.integers(0, size - side + 1))
            y1 = int(rng.integers(0, size - side + 1))
            box = (x1, y1, x1 + side, y1 + side)
            if all(_iou(box, b) <= max_iou for _, b in objects):
                objects.append((CLASSES[int(rng.choice(3, p=probs))], box))
                break
    return objects


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mid-grey with a soft gradient, blotchy low-frequency texture and pixel noise."""
    base = rng.uniform(100, 160)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    gx, gy = rng.uniform(-25, 25, size=2)
    grad = base + gx * xx + gy * yy
    coarse = rng.normal(0, 12, size=(8, 8))
    blotch = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1)))[:size, :size]
    img = grad[..., None] + blotch[..., None] + rng.normal(0, 6, size=(size, size, 3))
    img += rng.uniform(-8, 8, size=3)  # slight colour cast
    return np.clip(img, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, size: int, n_objects: int, rare_fraction: float = 0.1
               ) -> tuple[Image.Image, list[str], np.ndarray]:
    """One image with `n_objects` shapes: (image, labels, (N, 4) xyxy boxes in pixels).

    A box [x1, x2) covers pixel columns x1..x2-1, and the shape touches all four sides, so the box is
    exact (continuous coordinates, as COCO and torchvision count them).
    """
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    labels, boxes = [], []
    for name, (x1, y1, x2, y2) in _sample_objects(rng, size, n_objects, rare_fraction):
        jitter = rng.integers(-30, 31, size=3)
        colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(_PALETTES[name], jitter))
        outline = tuple(max(0, c - 90) for c in colour)
        r, b = x2 - 1, y2 - 1  # PIL's shape coordinates are inclusive
        if name == "circle":
            draw.ellipse((x1, y1, r, b), fill=colour, outline=outline)
        elif name == "square":
            draw.rectangle((x1, y1, r, b), fill=colour, outline=outline)
        else:
            draw.polygon([(x1, b), (r, b), ((x1 + r) / 2, y1)], fill=colour, outline=outline)
        labels.append(name)
        boxes.append((x1, y1, x2, y2))
    return img, labels, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def make_dataset(out_dir: str | Path, n_images: int = 40, image_size: int = 128, seed: int = 0,
                 negative_fraction: float = 0.1, rare_fraction: float = 0.1, max_objects: int = 5,
                 write_annotations: bool = True) -> list[Annotation]:
    """Write out_dir/images/img_XXXX.png and out_dir/annotations/img_XXXX.xml (VOC); return the
    Annotations (image paths relative to out_dir/images), in image order.

    `round(negative_fraction * n_images)` images hold no object (their XML has no <object>); the
    others hold 1..max_objects shapes. Everything follows from `seed`.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_neg = int(round(negative_fraction * n_images))
    negative = np.zeros(n_images, dtype=bool)
    negative[rng.choice(n_images, size=n_neg, replace=False)] = True
    width = max(4, len(str(n_images - 1)))
    annotations: list[Annotation] = []
    for i in range(n_images):
        n_obj = 0 if negative[i] else int(rng.integers(1, max_objects + 1))
        img, labels, xyxy = make_scene(rng, image_size, n_obj, rare_fraction)
        name = f"img_{i:0{width}d}.png"
        img.save(images_dir / name, optimize=False, compress_level=1)
        annotations.append(Annotation(image=name, boxes=Boxes(xyxy, (image_size, image_size)), labels=tuple(labels)))
    if write_annotations:
        from boxloop import formats

        formats.dump("voc", annotations, list(CLASSES), out_dir / "annotations", images_root=images_dir)
    return annotations


def count(annotations: list[Annotation]) -> dict:
    """The generator's own counts (what `boxloop status` must report after init)."""
    per_class = {c: 0 for c in CLASSES}
    for a in annotations:
        for lab in a.labels:
            per_class[lab] += 1
    return {
        "images": len(annotations),
        "negative_images": sum(a.is_negative for a in annotations),
        "boxes": sum(len(a) for a in annotations),
        "boxes_per_class": per_class,
    }
