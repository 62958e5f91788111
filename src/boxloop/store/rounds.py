"""Rounds, their metrics and their queries; rows come back as the small frozen types `Round` and `Query`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping

from boxloop.store.core import Core
from boxloop.store.schema import now, opt_float


class QueryState(StrEnum):
    """A query is open until its answer is imported, or stale when a newer batch replaced it."""

    OPEN = "open"
    ANSWERED = "answered"
    STALE = "stale"


@dataclass(frozen=True)
class Round:
    """One round: the loop step it reached (loop/transitions.py) and its status ('running', 'done',
    'failed'), with the resolved config it ran with."""

    id: int
    step: str | None
    status: str
    started: str | None = None
    finished: str | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Query:
    """One thing a round asked a human: a whole image (`box_index` None) or one of the boxes the round
    predicted on it (`box_index` into that round's stored Detections)."""

    id: int
    round: int
    batch: int
    image_id: int
    path: str
    box_id: int | None
    box_index: int | None
    strategy: str
    score: float | None
    state: QueryState


class Rounds(Core):
    """Rounds (their step and status), per-round metrics, and what each round asked."""

    # -- rounds ---------------------------------------------------------------------------------
    def start_round(self, config: Mapping[str, Any] | None = None, step: str = "start",
                    round_id: int | None = None) -> int:
        """Open a round (id 1, 2, ... unless given); its resolved config is saved with it."""
        with self.transaction():
            if round_id is None:
                round_id = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM rounds").fetchone()[0])
            self._conn.execute(
                "INSERT INTO rounds(id, step, status, started, config_json) VALUES (?, ?, 'running', ?, ?)",
                (round_id, step, now(), json.dumps(dict(config or {}), default=str)),
            )
        return round_id

    def update_round(self, round_id: int, step: str | None = None, status: str | None = None) -> None:
        """Record progress; status 'done' (or 'failed') also stamps the finish time."""
        with self.transaction():
            if step is not None:
                self._conn.execute("UPDATE rounds SET step = ? WHERE id = ?", (step, round_id))
            if status is not None:
                finished = now() if status in ("done", "failed") else None
                self._conn.execute(
                    "UPDATE rounds SET status = ?, finished = COALESCE(?, finished) WHERE id = ?",
                    (status, finished, round_id),
                )

    def rounds(self) -> list[Round]:
        rows = self._conn.execute(
            "SELECT id, step, status, started, finished, config_json FROM rounds ORDER BY id"
        ).fetchall()
        return [Round(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else {}) for r in rows]

    def round(self, round_id: int) -> Round | None:
        return next((r for r in self.rounds() if r.id == round_id), None)

    def last_round(self) -> Round | None:
        r = self.rounds()
        return r[-1] if r else None

    # -- metrics --------------------------------------------------------------------------------
    def set_metric(self, round: int, key: str, value: Any) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO metrics(round, key, value_json) VALUES (?, ?, ?) "
                "ON CONFLICT(round, key) DO UPDATE SET value_json = excluded.value_json",
                (int(round), key, json.dumps(value)),
            )

    def set_metrics(self, round: int, values: Mapping[str, Any]) -> None:
        with self.transaction():
            for k, v in values.items():
                self.set_metric(round, k, v)

    def metrics(self, round: int | None = None) -> dict[int, dict[str, Any]]:
        """{round: {key: value}}, all rounds or one."""
        sql, args = "SELECT round, key, value_json FROM metrics", []
        if round is not None:
            sql += " WHERE round = ?"
            args.append(int(round))
        out: dict[int, dict[str, Any]] = {}
        for r, k, v in self._conn.execute(sql + " ORDER BY round, key", args):
            out.setdefault(r, {})[k] = json.loads(v)
        return out

    # -- queries --------------------------------------------------------------------------------
    def add_queries(
        self, round: int, items: Iterable[tuple], strategy: str, batch: int = 0,
    ) -> list[int]:
        """Record what was asked: (image, box id or None, score[, box index]) per item. Returns query ids.

        A box query names its box by `box_index`, the index into that round's stored Detections."""
        ids = []
        with self.transaction():
            for item in items:
                image, box_id, score = item[:3]
                box_index = item[3] if len(item) > 3 else None
                cur = self._conn.execute(
                    "INSERT INTO queries(round, batch, image_id, box_id, box_index, strategy, score) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (int(round), int(batch), self.image_id(image), box_id,
                     None if box_index is None else int(box_index), strategy, opt_float(score)),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def queries(self, round: int | None = None, state: str | None = None) -> list[Query]:
        cond, args = [], []
        if round is not None:
            cond.append("q.round = ?")
            args.append(int(round))
        if state is not None:
            cond.append("q.state = ?")
            args.append(state)
        where = (" WHERE " + " AND ".join(cond)) if cond else ""
        rows = self._conn.execute(
            "SELECT q.id, q.round, q.batch, q.image_id, i.path, q.box_id, q.box_index, q.strategy, q.score, q.state "
            f"FROM queries q JOIN images i ON i.id = q.image_id{where} ORDER BY q.id",
            args,
        ).fetchall()
        return [Query(*r[:9], state=QueryState(r[9])) for r in rows]

    def mark_stale(self) -> int:
        """Every open query becomes stale (a new batch replaces it); returns how many."""
        with self.transaction():
            return self._conn.execute("UPDATE queries SET state = 'stale' WHERE state = 'open'").rowcount

    def set_query_state(self, query_ids: Iterable[int], state: str) -> None:
        state = QueryState(state)  # an unknown state fails here, naming the allowed ones
        with self.transaction():
            self._conn.executemany("UPDATE queries SET state = ? WHERE id = ?",
                                   [(state.value, int(i)) for i in query_ids])
