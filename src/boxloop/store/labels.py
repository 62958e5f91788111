"""Boxes and annotations: every label change, and reading labels back by subset."""

from __future__ import annotations

from types import EllipsisType
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.store.images import Images
from boxloop.store.schema import SUBSETS, opt_float
from boxloop.structures import Annotation, Boxes, Provenance, Source


class Labels(Images):
    """Boxes, with their provenance and weights, and annotations by subset."""

    # -- boxes ----------------------------------------------------------------------------------
    def _box_rows(
        self,
        image_id: int,
        ann: Annotation,
        force_source: Source | None,
        round: int | None,
        weights: Sequence[float] | None,
    ) -> list[tuple]:
        classes = {n: i for i, n in enumerate(self.classes)}
        xyxy = ann.boxes.xyxy
        if len(ann) and not np.isfinite(xyxy).all():
            raise ValueError(f"{ann.image}: box coordinates must be finite numbers")
        if weights is not None and len(weights) != len(ann):
            raise ValueError(f"{ann.image}: {len(weights)} weights for {len(ann)} boxes")
        rows = []
        for k in range(len(ann)):
            prov: Provenance = ann.provenance[k]
            source = force_source or prov.source
            label = ann.labels[k]
            if source == Source.BACKGROUND and not label:
                cid = None
            elif label in classes:
                cid = classes[label]
            else:
                raise ValueError(
                    f"{ann.image}: unknown class {label!r}; the project's classes are "
                    f"{', '.join(classes) or '(none)'}"
                )
            x1, y1, x2, y2 = (float(v) for v in xyxy[k])
            rows.append((
                image_id, cid, x1, y1, x2, y2, int(ann.difficult[k]), int(ann.truncated[k]),
                str(source), int(prov.round if round is None else round), prov.model,
                opt_float(prov.score), opt_float(prov.loc_quality),
                1.0 if weights is None else float(weights[k]),
            ))
        return rows

    def _insert_boxes(self, rows: list[tuple]) -> list[int]:
        ids = []
        for row in rows:
            cur = self._conn.execute(
                "INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, difficult, truncated, source, "
                "round, model, score, loc_quality, weight) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            ids.append(int(cur.lastrowid))
        return ids

    def add_box_arrays(self, image_ids: np.ndarray, class_ids: np.ndarray, xyxy: np.ndarray,
                       sources: str | np.ndarray, round: int = 0, model: str | None = None,
                       scores: np.ndarray | None = None, weights: np.ndarray | None = None) -> int:
        """Append many boxes given as arrays, in one executemany: the way to build a store of millions
        of boxes (scale benchmarks) without an Annotation per image. class id -1 = background (no
        class); a NaN score = none; weights default to 1. Returns how many were added."""
        n = len(image_ids)
        xyxy = np.asarray(xyxy, np.float64).reshape(n, 4)
        if not np.isfinite(xyxy).all():
            raise ValueError("box coordinates must be finite numbers")
        src = np.broadcast_to(np.asarray(sources, dtype=object), (n,))
        sc = np.full(n, np.nan) if scores is None else np.asarray(scores, np.float64)
        w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
        rows = ((int(i), None if c < 0 else int(c), *map(float, b), str(s), int(round), model,
                 None if np.isnan(v) else float(v), float(wt))
                for i, c, b, s, v, wt in zip(image_ids, class_ids, xyxy, src, sc, w))
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, source, round, model, score, weight) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        return n

    def set_annotation(self, image: int | str, annotation: Annotation, round: int = 0) -> list[int]:
        """A human's complete answer for one image: it becomes 'labelled' with exactly these boxes.

        Every active box it held before (human, pseudo, predicted, background) is deactivated (kept
        for history, `active = 0`); the new boxes are stored as human boxes of `round`. An
        annotation with no boxes makes the image a negative. Returns the new box ids.
        """
        with self.transaction():
            iid = self.image_id(image)
            rows = self._box_rows(iid, annotation, Source.HUMAN, round, None)
            self._conn.execute("UPDATE boxes SET active = 0 WHERE image_id = ? AND active = 1", (iid,))
            ids = self._insert_boxes(rows)
            self._conn.execute(
                "UPDATE images SET status = 'labelled', round_labelled = ? WHERE id = ?", (round, iid)
            )
        return ids

    def set_annotations(self, annotations: Mapping[str, Annotation], round: int = 0) -> None:
        """`set_annotation` for many images (keys are relative paths), in one transaction."""
        with self.transaction():
            for path, ann in annotations.items():
                self.set_annotation(path, ann, round)

    def add_boxes(
        self,
        image: int | str,
        annotation: Annotation,
        round: int | None = None,
        weights: Sequence[float] | None = None,
        status: str | None = None,
    ) -> list[int]:
        """Append boxes with the provenance the annotation carries (pseudo, predicted, ...).

        `round` overrides each box's provenance round; `status` optionally updates the image's
        status (e.g. 'partial' after a box-level answer). Returns the new box ids.
        """
        with self.transaction():
            iid = self.image_id(image)
            ids = self._insert_boxes(self._box_rows(iid, annotation, None, round, weights))
            if status is not None:
                self.set_status([iid], status, round)
        return ids

    def deactivate_boxes(
        self, image: int | str | None = None, sources: Sequence[str] | None = None,
        box_ids: Sequence[int] | None = None, model_prefix: str | None = None,
    ) -> int:
        """Retire boxes (kept for history): of one image and/or some sources and/or made by models
        whose name starts with `model_prefix`, or by id. Returns count."""
        cond, args = ["active = 1"], []
        if image is not None:
            cond.append("image_id = ?")
            args.append(self.image_id(image))
        if sources is not None:
            cond.append(f"source IN ({','.join('?' * len(sources))})")
            args.extend(str(Source(s)) for s in sources)
        if model_prefix is not None:
            cond.append("substr(model, 1, ?) = ?")
            args.extend([len(model_prefix), model_prefix])
        with self.transaction():
            if box_ids is not None:
                cur = self._conn.executemany(
                    f"UPDATE boxes SET active = 0 WHERE {' AND '.join(cond)} AND id = ?",
                    [(*args, int(b)) for b in box_ids],
                )
            else:
                cur = self._conn.execute(f"UPDATE boxes SET active = 0 WHERE {' AND '.join(cond)}", args)
            return cur.rowcount

    def box_table(self, subset: str = "all", split: str | None | EllipsisType = ...) -> dict[str, np.ndarray]:
        """Active boxes of a subset as columns (id, image_id, class_id, xyxy, source, weight, ...),
        for code that needs the per-box weights the `Annotation` type does not carry."""
        img_cond, sources = self._subset(subset)
        sql, args = self._box_sql(img_cond, sources, split)
        rows = [r for r in self._conn.execute(sql, args) if r[0] is not None]  # skip negatives
        cols = ["id", "image_id", "path", "width", "height", "class_id", "x1", "y1", "x2", "y2",
                "difficult", "truncated", "source", "round", "model", "score", "loc_quality", "weight"]
        table = {c: np.asarray([r[i] for r in rows], dtype=object) for i, c in enumerate(cols)}
        for c in ("id", "image_id", "width", "height", "difficult", "truncated", "round"):
            table[c] = table[c].astype(np.int64)
        table["class_id"] = np.asarray([-1 if r[5] is None else r[5] for r in rows], dtype=np.int64)
        for c in ("score", "loc_quality"):
            table[c] = np.asarray([np.nan if v is None else v for v in table[c]], dtype=np.float64)
        table["weight"] = table["weight"].astype(np.float64)
        table["xyxy"] = np.asarray([r[6:10] for r in rows], dtype=np.float64).reshape(-1, 4)
        for c in ("x1", "y1", "x2", "y2"):
            del table[c]
        return table

    def labelled_counts(self) -> dict[str, Any]:
        """Images and boxes a person has labelled outside the test set, and per class."""
        q = self._conn.execute
        images = q("SELECT COUNT(*) FROM images WHERE status IN ('labelled', 'partial') AND split != 'test'"
                   ).fetchone()[0]
        names = self.classes
        per_class = {n: 0 for n in names}
        for cid, n in q("SELECT b.class_id, COUNT(*) FROM boxes b JOIN images i ON i.id = b.image_id "
                        "WHERE b.active = 1 AND b.source = 'human' AND i.split != 'test' GROUP BY b.class_id"):
            per_class[names[cid]] = n
        return {"images_labelled": int(images), "human_boxes": int(sum(per_class.values())),
                "labelled_per_class": per_class}

    def pseudo_image_count(self) -> int:
        """Images holding an active pseudo box."""
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT image_id FROM boxes WHERE active = 1 AND source = 'pseudo')"
        ).fetchone()[0])

    # -- annotations ----------------------------------------------------------------------------
    @staticmethod
    def _subset(subset: str) -> tuple[str, tuple[str, ...]]:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        return SUBSETS[subset]

    @staticmethod
    def _box_sql(img_cond: str, sources: Sequence[str], split: Any) -> tuple[str, list]:
        args: list = list(sources)
        cond = f"({img_cond})"
        if split is None:
            cond += " AND i.split IS NULL"
        elif split is not ...:
            cond += " AND i.split = ?"
            args.append(split)
        src = ",".join("?" * len(sources))
        sql = (
            "SELECT b.id, i.id, i.path, i.width, i.height, b.class_id, b.x1, b.y1, b.x2, b.y2, "
            "b.difficult, b.truncated, b.source, b.round, b.model, b.score, b.loc_quality, b.weight "
            "FROM images i LEFT JOIN boxes b ON b.image_id = i.id AND b.active = 1 "
            f"AND b.source IN ({src}) WHERE {cond} ORDER BY i.id, b.id"
        )
        return sql, args

    def annotations(
        self,
        subset: str = "labelled",
        split: str | None | EllipsisType = ...,
        sources: Sequence[str] | None = None,
    ) -> dict[str, Annotation]:
        """{relative path: Annotation} for a subset (see `SUBSETS`), provenance rebuilt from columns.

        Negatives come back as empty Annotations; images outside the subset are absent. `split`
        narrows to 'train'/'val'/'test' or the pool (None); `sources` overrides the box sources.
        """
        img_cond, default_sources = self._subset(subset)
        srcs = tuple(str(Source(s)) for s in (sources or default_sources))
        sql, args = self._box_sql(img_cond, srcs, split)
        names = self.classes
        out: dict[str, Annotation] = {}
        current: tuple | None = None
        acc: list[tuple] = []

        def flush() -> None:
            if current is None:
                return
            path, w, h = current
            boxes = Boxes(np.array([r[6:10] for r in acc], dtype=np.float64).reshape(-1, 4), (w, h))
            out[path] = Annotation(
                image=path,
                boxes=boxes,
                labels=tuple("" if r[5] is None else names[r[5]] for r in acc),
                difficult=tuple(bool(r[10]) for r in acc),
                truncated=tuple(bool(r[11]) for r in acc),
                provenance=tuple(
                    Provenance(source=Source(r[12]), round=int(r[13]), model=r[14], score=r[15],
                               loc_quality=r[16])
                    for r in acc
                ),
            )

        last_id = None
        for row in self._conn.execute(sql, args):
            if row[1] != last_id:
                flush()
                last_id, current, acc = row[1], (row[2], row[3], row[4]), []
            if row[0] is not None:
                acc.append(row)
        flush()
        return out
