"""Image embeddings from the pretrained backbone, cached per image: what `typical` clusters.

`typical` (and `budget_aware` while the labelled set is small) needs no trained detector, only a
representation in which similar images lie close. We take the offline ImageNet EfficientNet-Lite0
that every detector starts from, in eval mode with frozen BatchNorm, at a small fixed size
(EMBED_SIZE = 224 px, the resolution it was trained at; the whole image squashed to a square, so
nothing is cropped away), and pool several levels:

    embedding = concat_l( GAP(level_l) / ||GAP(level_l)|| ) / sqrt(L),  levels strides 8, 16, 32

Why multi-level and not only the last map: the detectors read exactly these three levels, and the
objects a detection dataset is about are often small (blood cells, parts, pests) - at stride 32 a
224 px image is a 7x7 map whose pooled vector is dominated by ImageNet's whole-scene semantics,
while the stride-8/16 maps carry the texture, colour and object-density statistics that tell one
microscope slide, camera or scene layout from another. Each level is L2-normalised before the
concatenation so the 320-channel top level does not drown the 40- and 112-channel ones, and the
result has unit norm (Euclidean distance then ranks like cosine distance). 472 numbers per image.

Cache: one small .npy per image under PROJECT/cache/embeddings/<TAG>/, named by the SHA-256 of the
image file's bytes, so a file rewritten under the same name (new bytes) misses and is embedded anew,
and a renamed or copied file hits. `index.json` maps each path to (size, mtime_ns, ctime_ns, inode,
sha256); while the file's stat is unchanged, its hash is not recomputed. Any write changes ctime,
which no tool can set back, so a rewrite is always noticed. TAG names the embedding's settings:
change them and the old vectors are simply not found.

Written by hand: the pooling, the cache and its invalidation. timm builds Lite0
(`detectors.backbones.lite0_body`), Pillow decodes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["EMBED_SIZE", "LEVELS", "TAG", "Embedder", "embed_paths", "project_embeddings", "selection_features",
           "cache_dir"]

EMBED_SIZE = 224
LEVELS = (2, 3, 4)  # output strides 8, 16, 32 (backbones.py numbering)
TAG = f"lite0_gap{''.join(map(str, LEVELS))}_{EMBED_SIZE}_v1"


def cache_dir(project_dir: Path) -> Path:
    return Path(project_dir) / "cache" / "embeddings" / TAG


class Embedder:
    """The frozen pretrained Lite0 and the pooling above; `__call__(list of PIL images) -> (B, D)`."""

    def __init__(self, device: str = "cpu") -> None:
        import torch

        from boxloop.detectors.backbones import LITE_MEAN, LITE_STD, lite0_body

        self.torch = torch
        self.device = torch.device(device)
        body, channels = lite0_body(True, levels=LEVELS, trainable_layers=0, freeze_bn=True)
        self.body = body.eval().to(self.device)
        self.dim = int(sum(channels))
        self.mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(LITE_STD).view(1, 3, 1, 1).to(self.device)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        torch = self.torch
        arr = np.stack([np.asarray(im.resize((EMBED_SIZE, EMBED_SIZE), resample=2), np.uint8) for im in images])
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        with torch.inference_mode():
            maps = self.body(x)
            pooled = [torch.nn.functional.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in maps.values()]
            emb = torch.cat(pooled, dim=1) / float(np.sqrt(len(pooled)))
        return emb.cpu().numpy().astype(np.float32)


def _stat_key(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_vector(path: Path, vec: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(vec, np.float32))
    _atomic_write_bytes(path, buf.getvalue())


def embed_paths(paths: Sequence[str | Path], cache: Path | None = None, device: str = "cpu", batch_size: int = 16,
                progress: bool = False, stats: dict | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of image files, in order; read from / written to `cache` when given.

    `stats`, when a dict, receives {"hits": ..., "computed": ...} (what the tests check)."""
    from boxloop.images import file_sha256, load_rgb

    paths = [Path(p) for p in paths]
    index: dict[str, list] = {}
    index_path = None if cache is None else Path(cache) / "index.json"
    if index_path is not None and index_path.exists():
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, OSError):
            index = {}  # a cache, not a record: rebuild it
    out: list[np.ndarray | None] = [None] * len(paths)
    todo: list[tuple[int, str]] = []
    changed = False
    for i, p in enumerate(paths):
        if cache is None:
            todo.append((i, ""))
            continue
        key = str(p.resolve())
        st = _stat_key(p.stat())
        entry = index.get(key)
        if entry is not None and entry[:4] == st:
            sha = entry[4]
        else:
            sha = file_sha256(p)
            index[key] = [*st, sha]
            changed = True
        vec_path = Path(cache) / sha[:2] / f"{sha}.npy"
        if vec_path.exists():
            try:
                out[i] = np.load(vec_path)
                continue
            except (ValueError, OSError, EOFError):
                pass  # a damaged entry: embed again
        todo.append((i, sha))
    if todo:
        from boxloop.outputs import progress_bar

        embedder = Embedder(device)
        starts = range(0, len(todo), batch_size)
        with progress_bar(total=len(starts), desc="embedding", unit="batch", disable=not progress) as bar:
            for s in starts:
                part = todo[s:s + batch_size]
                vecs = embedder([load_rgb(paths[i], reduce_to=EMBED_SIZE) for i, _ in part])
                for (i, sha), v in zip(part, vecs):
                    out[i] = v
                    if cache is not None:
                        _save_vector(Path(cache) / sha[:2] / f"{sha}.npy", v)
                bar.update(1)
    if cache is not None and changed:
        _atomic_write_bytes(index_path, json.dumps(index).encode())
    if stats is not None:
        stats.update(hits=len(paths) - len(todo), computed=len(todo))
    if not paths:
        return np.zeros((0, 0), np.float32)
    return np.stack(out).astype(np.float32)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def project_embeddings(project, keys: Sequence[str], device: str = "auto", progress: bool = False) -> np.ndarray:
    """Embeddings of a project's images (relative paths), cached in the project folder."""
    root = project.image_root
    return embed_paths([root / k for k in keys], cache_dir(project.dir), device=_device(device), progress=progress)


def labelled_training_keys(project) -> list[str]:
    """The images the detector learns from: labelled (or partially) and in the train split."""
    return project.image_set("labelled_train")


def selection_features(project, pool_keys: Sequence[str], device: str = "auto", progress: bool = False
                       ) -> dict[str, np.ndarray]:
    """What `typical` and `budget_aware` take besides the pool's predictions: `image_features`
    (aligned with `pool_keys`) and `labelled_features` (the labelled training images: the covered
    clusters)."""
    labelled = [k for k in labelled_training_keys(project) if k not in set(pool_keys)]
    emb = project_embeddings(project, list(pool_keys) + labelled, device, progress)
    n = len(pool_keys)
    dim = emb.shape[1] if emb.size else 0
    return {"image_features": emb[:n], "labelled_features": emb[n:] if labelled else np.zeros((0, dim), np.float32)}
