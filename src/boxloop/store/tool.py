"""Answers a labelling tool sends live (Label Studio's webhooks to `boxloop serve`), with provenance.

A tool annotation (tool, task id, annotation id) is one person's complete answer for one image: it
replaces the image's boxes as `set_annotation` does, and its row keeps who made it and when, a digest
of its boxes and the ids of the boxes it made. Applying the same content again changes nothing (a
webhook sent twice); a deletion retires exactly its boxes and gives the image back the latest other
live answer, or returns it to the pool. Each change takes the next `seq`, so "answers since the last
training" survives a restart; every change is one transaction, so a kill leaves it wholly in or out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from boxloop.store.labels import Labels
from boxloop.structures import Annotation


def annotation_digest(annotation: Annotation) -> str:
    """The content of an answer: labels and boxes (to 1e-4 px), in order; not who or when."""
    rows = [[lab, [round(float(v), 4) for v in box]] for lab, box in zip(annotation.labels, annotation.boxes.xyxy)]
    return hashlib.sha256(json.dumps([annotation.image, rows]).encode()).hexdigest()


class ToolAnnotations(Labels):
    """Live answers from a labelling tool, applied idempotently."""

    def _tool_row(self, tool: str, task_id: str, annotation_id: str) -> tuple | None:
        return self._conn.execute(
            "SELECT digest, deleted, image_id, box_ids_json FROM tool_annotations "
            "WHERE tool = ? AND task_id = ? AND annotation_id = ?", (tool, task_id, annotation_id)).fetchone()

    def _next_seq(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tool_annotations").fetchone()[0])

    def apply_tool_annotation(self, tool: str, task_id: str | int, annotation_id: str | int, annotation: Annotation,
                              who: str | None = None, at: str | None = None, round: int = 0) -> bool:
        """Make `annotation` the image's labels, recorded as this tool annotation. Returns False (and
        writes nothing) when this annotation already holds exactly these boxes."""
        task_id, annotation_id = str(task_id), str(annotation_id)
        digest = annotation_digest(annotation)
        with self.transaction():
            row = self._tool_row(tool, task_id, annotation_id)
            if row is not None and row[0] == digest and not row[1]:
                return False
            ids = self.set_annotation(annotation.image, annotation, round)
            self._conn.execute(
                "INSERT INTO tool_annotations(tool, task_id, annotation_id, image_id, who, at, digest, box_ids_json, "
                "deleted, seq) VALUES (?,?,?,?,?,?,?,?,0,?) ON CONFLICT(tool, task_id, annotation_id) DO UPDATE SET "
                "image_id = excluded.image_id, who = excluded.who, at = excluded.at, digest = excluded.digest, "
                "box_ids_json = excluded.box_ids_json, deleted = 0, seq = excluded.seq",
                (tool, task_id, annotation_id, self.image_id(annotation.image), who, at, digest, json.dumps(ids),
                 self._next_seq()))
        return True

    def retract_tool_annotation(self, tool: str, task_id: str | int | None, annotation_id: str | int) -> bool:
        """Retire the boxes this tool annotation made (task_id None: the tool's annotation ids are unique).
        The image gets back the latest other live answer from the tool, or goes back to the pool (its
        train/val split cleared). False: nothing to do."""
        annotation_id = str(annotation_id)
        with self.transaction():
            row = self._conn.execute(
                "SELECT task_id, deleted, image_id, box_ids_json FROM tool_annotations WHERE tool = ? AND "
                "annotation_id = ? AND (? IS NULL OR task_id = ?)",
                (tool, annotation_id, None if task_id is None else str(task_id),
                 None if task_id is None else str(task_id))).fetchone()
            if row is None or row[1]:
                return False
            task_id, _, image_id, box_ids = row
            self._conn.executemany("UPDATE boxes SET active = 0 WHERE id = ?", [(b,) for b in json.loads(box_ids)])
            self._conn.execute("UPDATE tool_annotations SET deleted = 1, seq = ? WHERE tool = ? AND task_id = ? "
                               "AND annotation_id = ?", (self._next_seq(), tool, task_id, annotation_id))
            other = self._conn.execute("SELECT box_ids_json FROM tool_annotations WHERE image_id = ? AND deleted = 0 "
                                       "ORDER BY seq DESC LIMIT 1", (image_id,)).fetchone()
            if other is not None:
                self._conn.executemany("UPDATE boxes SET active = 1 WHERE id = ?", [(b,) for b in json.loads(other[0])])
            else:
                self._conn.execute("UPDATE images SET status = 'unlabelled', round_labelled = NULL, split = "
                                   "CASE WHEN split = 'test' THEN 'test' ELSE NULL END WHERE id = ?", (image_id,))
        return True

    def tool_annotations(self, tool: str | None = None, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The recorded tool annotations (image path, who, when, box ids, seq), oldest change first."""
        rows = self._conn.execute(
            "SELECT t.tool, t.task_id, t.annotation_id, i.path, t.who, t.at, t.box_ids_json, t.deleted, t.seq "
            "FROM tool_annotations t JOIN images i ON i.id = t.image_id WHERE (? IS NULL OR t.tool = ?) "
            "AND (? OR t.deleted = 0) ORDER BY t.seq", (tool, tool, int(include_deleted))).fetchall()
        keys = ("tool", "task_id", "annotation_id", "image", "who", "at", "box_ids", "deleted", "seq")
        return [dict(zip(keys, (*r[:6], json.loads(r[6]), bool(r[7]), r[8]))) for r in rows]

    def tool_seq(self) -> int:
        """The number of the last change a tool made (0: none): compare with a later value to count changes."""
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tool_annotations").fetchone()[0])
