"""Stored predictions: one blob per (round, image, model), and the blob format."""

from __future__ import annotations

import io
import sqlite3
import struct
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from boxloop.store.images import Images
from boxloop.structures import Boxes, Detections


class Predictions(Images):
    """Each round's predictions on the pool."""

    # -- predictions ----------------------------------------------------------------------------
    def save_predictions(self, round: int, predictions: Mapping[int | str, Detections], model: str = "") -> None:
        """Store each image's Detections (a raw-array blob), replacing earlier ones of the same round/model."""
        with self.transaction():
            rows = [(int(round), self.image_id(k), model, detections_to_bytes(d)) for k, d in predictions.items()]
            self._conn.executemany(
                "INSERT OR REPLACE INTO predictions(round, image_id, model, blob) VALUES (?, ?, ?, ?)", rows
            )

    def _prediction_rows(self, round: int, model: str | None) -> sqlite3.Cursor:
        """(path, model, blob) of one round's stored predictions, in image-id order."""
        sql = ("SELECT i.path, p.model, p.blob FROM predictions p JOIN images i ON i.id = p.image_id "
               "WHERE p.round = ?")
        args: list = [int(round)]
        if model is not None:
            sql += " AND p.model = ?"
            args.append(model)
        # p.image_id (= i.id) walks the primary key in order; "ORDER BY i.id" sorted every blob in a temp b-tree
        return self._conn.execute(sql + " ORDER BY p.image_id", args)

    def predicted_paths(self, round: int) -> set[str]:
        """Images holding stored predictions of `round` (a resumed prediction skips them)."""
        return {r[0] for r in self._conn.execute(
            "SELECT i.path FROM predictions p JOIN images i ON i.id = p.image_id WHERE p.round = ?", (int(round),))}

    def prediction_blobs(self, round: int, model: str | None = None) -> dict[str, bytes]:
        """Image path -> the stored blob of `round`, undecoded: two scorings compared byte for byte."""
        return {path: bytes(blob) for path, _, blob in self._prediction_rows(round, model)}

    def prediction_counts(self, round: int) -> tuple[int, int]:
        """(stored prediction rows, distinct images) of `round`: how far a scoring has come."""
        rows, images = self._conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT image_id) FROM predictions WHERE round = ?", (int(round),)).fetchone()
        return int(rows), int(images)

    def load_predictions(self, round: int, model: str | None = None) -> dict[str, Detections]:
        """{relative path: Detections} of one round (one model, or all if there is only one)."""
        out: dict[str, Detections] = {}
        models = set()
        for path, m, blob in self._prediction_rows(round, model):
            models.add(m)
            out[path] = detections_from_bytes(blob)
        if len(models) > 1:
            raise ValueError(f"round {round} holds predictions of models {sorted(models)}; pass model=")
        return out


    def prediction_table(self, round: int, keys: Iterable[str] | None = None, model: str | None = None,
                         features: bool = True):
        """One round's stored predictions as a `DetectionTable` (images in id order), decoded in bulk
        without a `Detections` per image: ~1-2 s for 100,000 images x 10 boxes, where
        `load_predictions` + `DetectionTable.from_detections` take ~6 s (benchmarks/scale.py).
        `keys` keeps only those images (relative paths; images without stored predictions are left
        out); `features=False` skips the per-box features (only coreset needs them)."""
        wanted = None if keys is None else set(keys)
        paths, blobs, models = [], [], set()
        for path, m, blob in self._prediction_rows(round, model):
            models.add(m)
            if wanted is None or path in wanted:
                paths.append(path)
                blobs.append(blob)
        if len(models) > 1:
            raise ValueError(f"round {round} holds predictions of models {sorted(models)}; pass model=")
        return detection_table_from_blobs(paths, blobs, features=features)


# A stored prediction blob: this header, then the arrays as raw little-endian bytes in this order:
# xyxy f8 (n, 4), labels i8 (n), scores f4 (n), class_probs f4 (n, c), [loc_quality f4 (n)],
# [features f4 (n, d)]. Decoding is a few `np.frombuffer` views (~13 us an image), so a selection
# can load 100,000 images' predictions in about a second; the .npz blobs of older stores (~0.9 ms
# an image to open) are still read.
_BLOB_MAGIC = b"BXLDET1\n"
_BLOB_HEADER = struct.Struct("<8s6q")  # magic, n, c, d (-1: no features), has loc_quality, width, height


def detections_to_bytes(d: Detections) -> bytes:
    """A Detections as a blob (see `_BLOB_HEADER`)."""
    n, c = len(d), d.num_classes
    w, h = d.image_size
    f, lq = d.features, d.loc_quality
    parts = [
        _BLOB_HEADER.pack(_BLOB_MAGIC, n, c, -1 if f is None else f.shape[1], lq is not None, w, h),
        np.ascontiguousarray(d.boxes.xyxy, "<f8").tobytes(),
        np.ascontiguousarray(d.labels, "<i8").tobytes(),
        np.ascontiguousarray(d.scores, "<f4").tobytes(),
        np.ascontiguousarray(d.class_probs, "<f4").tobytes(),
    ]
    if lq is not None:
        parts.append(np.ascontiguousarray(lq, "<f4").tobytes())
    if f is not None:
        parts.append(np.ascontiguousarray(f, "<f4").tobytes())
    return b"".join(parts)


def detections_from_bytes(blob: bytes) -> Detections:
    """A stored blob back as Detections (the raw format, or an older store's .npz)."""
    if not blob.startswith(_BLOB_MAGIC):
        return _detections_from_npz(blob)
    buf = bytearray(blob)  # writable arrays, as the .npz ones were
    offset = _BLOB_HEADER.size

    def take(dtype: str, rows: int, cols: int | None = None) -> np.ndarray:
        nonlocal offset
        a = np.frombuffer(buf, dtype, rows if cols is None else rows * cols, offset)
        offset += a.nbytes
        return a if cols is None else a.reshape(rows, cols)

    try:
        _, n, c, dim, has_lq, w, h = _BLOB_HEADER.unpack_from(blob)
        xyxy, labels, scores, probs = take("<f8", n, 4), take("<i8", n), take("<f4", n), take("<f4", n, c)
        lq = take("<f4", n) if has_lq else None
        feats = take("<f4", n, dim) if dim >= 0 else None
    except (ValueError, struct.error) as e:
        raise ValueError(f"a stored prediction blob is truncated or corrupt ({e}); run `predict` again") from e
    return Detections(boxes=Boxes(xyxy, (w, h)), labels=labels, scores=scores, class_probs=probs,
                      loc_quality=lq, features=feats)


def detection_table_from_blobs(keys: Sequence[str], blobs: Sequence[bytes], features: bool = True):
    """The `DetectionTable` of per-image blobs, with the same rows and columns as
    `DetectionTable.from_detections({k: detections_from_bytes(b)})`, but decoded in bulk: one
    slice per image, then one vectorised gather per column. `features=False` leaves the
    features out (90% of the bytes at D=128; only coreset reads them). Anything unusual (an .npz
    blob, images disagreeing on the classes or the fields, no detection at all) takes that
    per-image path, errors included."""
    from boxloop.strategies.table import DetectionTable

    def per_image() -> DetectionTable:
        table = DetectionTable.from_detections({k: detections_from_bytes(b) for k, b in zip(keys, blobs)})
        return table if features else replace(table, features=None)

    if not blobs or not all(b.startswith(_BLOB_MAGIC) for b in blobs):
        return per_image()
    try:
        heads = np.array([_BLOB_HEADER.unpack_from(b)[1:5] for b in blobs], dtype=np.int64)  # n, c, d, has_lq
    except struct.error:
        return per_image()  # raises the clear error
    n = heads[:, 0]
    full = heads[n > 0]
    if full.shape[0] == 0 or (full[:, 1:] != full[0, 1:]).any() or (n < 0).any():
        return per_image()
    c, dim, has_lq = (int(v) for v in full[0, 1:])
    # per row, in 4-byte words: xyxy 8, labels 2, scores 1, class_probs c, loc_quality 0/1; then features
    fields = [("xyxy", 8), ("labels", 2), ("scores", 1), ("class_probs", c), ("loc_quality", has_lq)]
    small_w = sum(w for _, w in fields)
    head = _BLOB_HEADER.size
    lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
    if ((lengths != head + 4 * n * (small_w + max(dim, 0))) & (n > 0)).any():
        return per_image()  # a blob shorter or longer than its header says: the per-image error
    ns = n.tolist()
    # every image's small fields, one after another: image i holds n_i*small_w words, field by field
    small = np.frombuffer(b"".join([b[head:head + 4 * small_w * k] for b, k in zip(blobs, ns) if k]), "<i4")
    total = int(n.sum())
    image_index = np.repeat(np.arange(len(blobs), dtype=np.int64), n)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    row_start = starts[image_index]  # rows before this row's image
    row_n = n[image_index]
    box_index = np.arange(total, dtype=np.int64) - row_start
    cols: dict[str, np.ndarray] = {}
    before = 0
    for name, width in fields:
        if width:  # word of row r's field: image start + n_i * (words of earlier fields) + box index * width
            pos = small_w * row_start + row_n * before + box_index * width
            cols[name] = small[pos[:, None] + np.arange(width)]
        before += width
    labels = cols["labels"].view("<i8").reshape(total).astype(np.int64)
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"stored predictions hold labels outside [0, {c}); run `predict` again")
    feats = None
    if features and dim >= 0:  # image after image, each a row-major (n_i, dim) block: the column as it is
        rest = [memoryview(b)[head + 4 * small_w * k:] for b, k in zip(blobs, ns) if k]
        feats = np.frombuffer(bytearray().join(rest), "<f4").reshape(total, dim)  # bytearray: writable
    return DetectionTable(
        keys=tuple(keys),
        image_index=image_index,
        box_index=box_index,
        boxes=cols["xyxy"].view("<f8").reshape(total, 4).astype(np.float32),
        labels=labels,
        scores=cols["scores"].view("<f4").reshape(total).astype(np.float32),
        class_probs=cols["class_probs"].view("<f4").reshape(total, c).astype(np.float32),
        loc_quality=cols["loc_quality"].view("<f4").reshape(total).astype(np.float32) if has_lq else None,
        features=None if feats is None else feats.astype(np.float32, copy=False),
    )


def _detections_from_npz(blob: bytes) -> Detections:
    """The .npz blobs that stores written before the raw format hold."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        w, h = (int(v) for v in z["image_size"])
        return Detections(
            boxes=Boxes(z["xyxy"], (w, h)),
            labels=z["labels"],
            scores=z["scores"],
            class_probs=z["class_probs"],
            loc_quality=z["loc_quality"] if "loc_quality" in z.files else None,
            features=z["features"] if "features" in z.files else None,
        )
