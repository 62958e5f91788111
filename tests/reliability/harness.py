"""Crash-safety harness: run boxloop commands as subprocesses, SIGKILL them at random moments and at
chosen steps of a round, check the project after every kill, resume by re-running the same command,
and compare the end result with an uninterrupted run of the same command and seed.

What is checked after each kill (all from the raw SQLite file, independent of boxloop's own code,
read-only: no check creates, changes or removes a file of the command's folder, which is verified):
  - `PRAGMA integrity_check` is 'ok' and `PRAGMA foreign_key_check` is empty, for every database;
  - no label lost or duplicated: every 'labelled' image holds exactly the oracle's boxes (class
    multiset), as active human boxes of one round, never re-labelled; unlabelled images hold no
    human box; an answered query's image is labelled in that round, an open query's is not; a round
    past its oracle step has no open query, a round before it has no query at all; the recorded cost
    counts exactly the answered queries; auto-labelled images carry pseudo boxes of one iteration and
    the iteration table agrees with the boxes;
  - the kill leaves the command resumable: re-running it finishes (or says there is nothing left);
  - work built aside and renamed into place when whole (simulate's copy of its base to a run) is
    stated as in flight in the kill's row, never checked as a result; the re-run removes it once it
    gets back to that step, and no finished run is ever without its database.
At the end: results.json / autolabel.json / the store's status and contents, and the weights of every
checkpoint, equal those of the uninterrupted run.

Written by hand: the triggers, the checks and the report; subprocess/signal/sqlite3 do the rest.
Subprocesses run with OMP_NUM_THREADS=1 so that CPU training is bit-for-bit repeatable.

Run it directly for the full table:  python tests/reliability/harness.py [--quick] [WORKDIR]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

PY = sys.executable
BOXLOOP = [PY, "-m", "boxloop.cli"]
DB = "boxloop.db"
LOOP_STEPS = ("train", "evaluate", "predict", "select", "oracle", "semi")
PROCESS_TIMEOUT = 900.0  # seconds one subprocess may run before the harness calls it hung
STEP_PAUSE = 0.25  # seconds the commands hold before each loop step and in simulate's copy (BOXLOOP_STEP_PAUSE)


def tiny_args(steps: int | None = 4) -> list[str]:
    """The smallest detector settings the CLI offers: a run of a few seconds per step on a CPU
    (steps None: no --steps, for commands with their own step options)."""
    return ["--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained",
            *(["--steps", str(steps)] if steps is not None else []),
            "--image-size", "64", "--batch-size", "4", "--device", "cpu"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BOXLOOP_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONHASHSEED="0",
               PYTHONUNBUFFERED="1", BOXLOOP_STEP_PAUSE=str(STEP_PAUSE))  # every step stays visible that long
    return env


# -- report ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One kill (or one final comparison, with kill=False)."""

    command: str
    run: str
    trigger: str
    step_at_kill: str
    outcome: str
    ok: bool
    kill: bool = True


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(o.kill for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def kills_by(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for o in self.outcomes:
            if o.kill:
                out[o.command][o.step_at_kill.split(" ")[-1]] += 1
        return out

    def table(self) -> str:
        lines = ["| # | command | run | trigger | step at kill | outcome |", "|---|---|---|---|---|---|"]
        n = 0
        for o in self.outcomes:
            n += o.kill
            lines.append(f"| {n if o.kill else ''} | {o.command} | {o.run} | {o.trigger} | {o.step_at_kill} | "
                         f"{'' if o.ok else 'FAIL: '}{o.outcome} |")
        lines.append("")
        lines.append(f"kills: {self.kills}; failures: {len(self.failures)}")
        for cmd, steps in self.kills_by().items():
            lines.append(f"  {cmd}: " + ", ".join(f"{s} {n}" for s, n in sorted(steps.items())))
        return "\n".join(lines)


# -- sqlite helpers (independent of boxloop.store) ---------------------------------------------------


BESIDE = ("-wal", "-shm", "-journal")  # what SQLite keeps beside a database while it is open or was killed


@contextmanager
def snapshot(db: Path) -> Iterator[Path]:
    """A private copy of `db` with its -wal and -journal (not the -shm index: SQLite rebuilds it from
    the -wal, as the next opener of a killed writer's database does), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="boxloop-check-") as scratch:
        copy = Path(scratch) / db.name
        for suffix in ("", "-wal", "-journal"):
            if Path(f"{db}{suffix}").is_file():
                shutil.copyfile(f"{db}{suffix}", f"{copy}{suffix}")
        yield copy


@contextmanager
def read_only(db: Path, live: bool = False) -> Iterator[sqlite3.Connection]:
    """A read-only connection (`mode=ro` URI) to `db` that creates and changes no file where `db` lies.

    `mode=ro` alone does not promise that for a WAL database (seen with SQLite 3.40): with no -wal
    beside the file, a reader creates -wal and -shm and, read-only, cannot remove them again; after
    a killed writer, a reader rewrites the -shm index. So, with nothing beside the file, it is opened
    `immutable` as well (SQLite reads that one file and takes no lock); with a -wal, -shm or
    -journal beside it, a `snapshot` is opened instead. Checks run on stopped processes only.
    `live`: an observation while the command runs (when to kill); it reads the file itself, `mode=ro`
    (plus `immutable` while nothing is beside it: a WAL writer changes the file only at a checkpoint,
    with its -wal beside it), and may touch the -shm index as any concurrent reader does."""
    beside = [s for s in BESIDE if Path(f"{db}{s}").exists()]
    if not db.is_file():
        raise sqlite3.OperationalError(f"{db}: no such file")
    if not beside or live:
        conn = sqlite3.connect(db.resolve().as_uri() + ("?mode=ro" if beside else "?mode=ro&immutable=1"),
                               uri=True, timeout=2.0 if live else 10.0)
        try:
            yield conn
        finally:
            conn.close()
        return
    with snapshot(db) as copy:
        # a hot rollback journal can only be rolled back by a writer: then the private copy opens read-write
        mode = "" if Path(f"{copy}-journal").exists() else "?mode=ro"
        conn = sqlite3.connect(copy.as_uri() + mode, uri=True, timeout=10.0)
        try:
            yield conn
        finally:
            conn.close()


def read_rows(db: Path, sql: str, args: Sequence = (), live: bool = False) -> list[tuple] | None:
    """Rows of a read-only query, or None when the file is absent or (briefly) unreadable."""
    if not db.is_file():
        return None
    try:
        with read_only(db, live) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None


def integrity_problems(db: Path) -> list[str]:
    with read_only(db) as conn:
        res = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    out = [] if res == ["ok"] else [f"{db}: integrity_check says {res[:3]}"]
    if fk:
        out.append(f"{db}: foreign_key_check lists {len(fk)} rows, e.g. {fk[:2]}")
    return out


def tree_state(folder: Path | None) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, mtime in ns); a check must leave this as it found it."""
    if folder is None or not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _json_strip(value: Any, drop: set[str]) -> Any:
    """value without the keys in `drop` (wall-clock seconds and paths), recursively."""
    if isinstance(value, dict):
        return {k: _json_strip(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_json_strip(v, drop) for v in value]
    return value


def project_fingerprint(project: Path) -> dict[str, Any]:
    """Everything a run leaves in its store, minus wall-clock times and absolute paths; plus the
    weights of every checkpoint under PROJECT/models and `Project.status()`."""
    with read_only(project / DB) as conn:
        fp = _store_fingerprint(conn, project)
    fp["weights"] = {str(p.relative_to(project)): weights_digest(p) for p in sorted((project / "models").rglob("*.pt"))}
    from boxloop.store import Project

    with snapshot(project / DB) as copy, Project.open(copy.parent) as proj:  # boxloop opens its store read-write
        fp["status"] = _json_strip(proj.status(), {"project", "image_root"})
    return fp


def _store_fingerprint(conn: sqlite3.Connection, project: Path) -> dict[str, Any]:
    q = conn.execute
    fp: dict[str, Any] = {}
    fp["images"] = q("SELECT path, split, status, round_labelled FROM images ORDER BY path").fetchall()
    fp["boxes"] = [
        (p, c, src, r, a, round(w, 6), None if s is None else round(s, 6), tuple(round(v, 4) for v in xy))
        for p, c, src, r, a, w, s, *xy in q(
            "SELECT i.path, b.class_id, b.source, b.round, b.active, b.weight, b.score, b.x1, b.y1, b.x2, b.y2 "
            "FROM boxes b JOIN images i ON i.id = b.image_id ORDER BY i.path, b.source, b.round, b.x1, b.y1, "
            "b.x2, b.y2, b.active")]
    fp["queries"] = q("SELECT q.round, q.batch, i.path, q.box_index, q.strategy, q.state, round(q.score, 6) "
                      "FROM queries q JOIN images i ON i.id = q.image_id ORDER BY q.id").fetchall()
    fp["rounds"] = q("SELECT id, step, status, config_json FROM rounds ORDER BY id").fetchall()
    fp["metrics"] = {f"{r}/{k}": _json_strip(json.loads(v), {"seconds"} if k.startswith("autolabel") else set())
                     for r, k, v in q("SELECT round, key, value_json FROM metrics ORDER BY round, key")}
    meta = {}
    for k, v in q("SELECT key, value FROM meta ORDER BY key"):
        if k in ("created", "image_root"):
            continue
        value = json.loads(v)
        if k == "current_checkpoint" and value and os.path.isabs(value):  # stored relative since issue 31
            value = os.path.relpath(value, project)
        meta[k] = value
    fp["meta"] = meta
    preds = []
    for r, p, m, blob in q("SELECT p.round, i.path, p.model, p.blob FROM predictions p JOIN images i "
                           "ON i.id = p.image_id ORDER BY p.round, i.path"):
        h = hashlib.sha256(bytes(blob))  # the stored bytes themselves: same detections, same blob
        preds.append((r, p, m, h.hexdigest()[:16]))
    fp["predictions"] = preds
    return fp


def weights_digest(path: Path) -> str:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not raised
        return f"unreadable: {type(e).__name__}"
    h = hashlib.sha256()
    for k in sorted(ckpt["model"]):
        h.update(k.encode())
        h.update(ckpt["model"][k].detach().cpu().contiguous().numpy().tobytes())
    return f"{h.hexdigest()[:16]} step {ckpt.get('step')} complete {ckpt.get('complete')}"


def diff_fingerprints(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two fingerprints differ (first few places)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'reference' if k in a else 'resumed run'}")
            else:
                out.extend(diff_fingerprints(a[k], b[k], f"{path}/{k}"))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries in the reference, {len(b)} after kills"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff_fingerprints(x, y, f"{path}[{i}]"))
        return out
    return [] if a == b else [f"{path}: reference {str(a)[:120]!r} vs resumed {str(b)[:120]!r}"]


# -- label checks ---------------------------------------------------------------------------------


def check_loop_labels(db: Path, truth: dict[str, list[str]], initial: int | None, budget: int | None) -> list[str]:
    """Label invariants of a project driven by the loop with a simulated (or answered) oracle.

    `truth`: image path -> the oracle's class names. `initial`: labelled non-test images before any
    query (None: don't check the total). `budget`: most queries a round may hold."""
    with read_only(db) as conn:
        return _loop_label_problems(conn, db.parent.name, truth, initial, budget)


def _loop_label_problems(conn: sqlite3.Connection, name: str, truth: dict[str, list[str]], initial: int | None,
                         budget: int | None) -> list[str]:
    p: list[str] = []
    q = conn.execute
    imgs = {r[0]: r[1:] for r in q("SELECT path, id, split, status, round_labelled FROM images")}
    human: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path, cname, rnd in q("SELECT i.path, c.name, b.round FROM boxes b JOIN images i ON i.id = b.image_id "
                              "LEFT JOIN classes c ON c.id = b.class_id WHERE b.active = 1 AND b.source = 'human'"):
        human[path].append((cname, rnd))
    for path, (_, split, status, rl) in imgs.items():
        h = human.get(path, [])
        if status == "labelled":
            if sorted(c for c, _ in h) != sorted(truth[path]):
                p.append(f"{name}: {path} is labelled with {len(h)} human boxes {sorted(c for c, _ in h)}, "
                         f"the oracle has {len(truth[path])} {sorted(truth[path])} (label lost or duplicated)")
            if len({r for _, r in h}) > 1 or (h and h[0][1] != (rl or 0)):
                p.append(f"{name}: {path} holds human boxes of rounds {sorted({r for _, r in h})}, labelled in {rl}")
        elif status == "unlabelled" and h:
            p.append(f"{name}: unlabelled image {path} holds {len(h)} active human boxes")
    for path, n in q("SELECT i.path, COUNT(*) FROM boxes b JOIN images i ON i.id = b.image_id WHERE b.active = 0 "
                     "AND b.source = 'human' AND b.round > 0 GROUP BY i.path"):
        p.append(f"{name}: {path} was labelled twice ({n} retired human boxes of a query round)")
    for path, n in q("SELECT i.path, COUNT(*) FROM boxes b JOIN images i ON i.id = b.image_id WHERE b.active = 1 "
                     "AND b.source = 'pseudo' AND i.status = 'labelled' GROUP BY i.path"):
        p.append(f"{name}: human-labelled {path} still holds {n} active pseudo boxes")
    rounds = dict(q("SELECT id, step FROM rounds").fetchall())
    answered: Counter = Counter()
    per_round: Counter = Counter()
    answered_round: Counter = Counter()
    for rnd, path, state in q("SELECT q.round, i.path, q.state FROM queries q JOIN images i ON i.id = q.image_id"):
        _, split, status, rl = imgs[path]
        if state != "stale":
            per_round[rnd] += 1
        if state == "answered":
            answered[path] += 1
            answered_round[rnd] += 1
            if status != "labelled" or rl != rnd:
                p.append(f"{name}: query for {path} (round {rnd}) is answered but the image is {status} "
                         f"(round {rl}): label lost")
        elif state == "open":
            if status == "labelled":
                p.append(f"{name}: {path} is labelled but its round-{rnd} query is still open")
            step = rounds.get(rnd)
            if step in ("semi", "done"):
                p.append(f"{name}: round {rnd} is at step {step} with an open query for {path}")
    for path, n in answered.items():
        if n > 1:
            p.append(f"{name}: {path} was asked and answered {n} times")
    for rnd, n in per_round.items():
        step = rounds.get(rnd)
        if step in ("train", "evaluate", "predict", "select"):
            p.append(f"{name}: round {rnd} is at step {step} but already holds {n} queries")
        if budget is not None and n > budget:
            p.append(f"{name}: round {rnd} holds {n} queries, more than the budget {budget}")
    for rnd, v in q("SELECT round, value_json FROM metrics WHERE key = 'cost'"):
        images = json.loads(v).get("images")
        if images != answered_round.get(rnd, 0):
            p.append(f"{name}: round {rnd} cost counts {images} images, {answered_round.get(rnd, 0)} queries answered")
    withheld = q("SELECT value FROM meta WHERE key = 'withheld_for_simulation'").fetchone()
    if initial is not None and withheld is not None:  # (before the seed set is drawn, all labels are in)
        n_lab = q("SELECT COUNT(*) FROM images WHERE status = 'labelled' AND (split IS NULL OR split != 'test')"
                  ).fetchone()[0]
        if n_lab != initial + sum(answered_round.values()):
            p.append(f"{name}: {n_lab} labelled non-test images, expected {initial} + "
                     f"{sum(answered_round.values())} answered")
    return p


def check_autolabel_labels(db: Path, human_before: dict[str, list[str]]) -> list[str]:
    """Auto-labelling never touches human labels; pseudo images and the iteration table agree."""
    with read_only(db) as conn:
        return _autolabel_problems(conn, human_before)


def _autolabel_problems(conn: sqlite3.Connection, human_before: dict[str, list[str]]) -> list[str]:
    p: list[str] = []
    q = conn.execute
    human: dict[str, list[str]] = defaultdict(list)
    for path, cname in q("SELECT i.path, c.name FROM boxes b JOIN images i ON i.id = b.image_id "
                         "JOIN classes c ON c.id = b.class_id WHERE b.active = 1 AND b.source = 'human'"):
        human[path].append(cname)
    for path in set(human) | set(human_before):
        if sorted(human.get(path, [])) != sorted(human_before.get(path, [])):
            p.append(f"{path}: human boxes changed from {sorted(human_before.get(path, []))} to "
                     f"{sorted(human.get(path, []))}")
    pseudo: dict[str, set[int]] = defaultdict(set)
    info = {r[0]: r[1:] for r in q("SELECT path, split, status FROM images")}
    for path, rnd in q("SELECT i.path, b.round FROM boxes b JOIN images i ON i.id = b.image_id "
                       "WHERE b.active = 1 AND b.source = 'pseudo'"):
        pseudo[path].add(rnd)
    for path, rounds in pseudo.items():
        split, status = info[path]
        if len(rounds) > 1:
            p.append(f"{path}: auto-labelled in iterations {sorted(rounds)} (labelled twice)")
        if status != "unlabelled" or split not in ("train", "val"):
            p.append(f"{path}: auto-labelled image has status {status}, split {split}")
    for path, (split, status) in info.items():
        if status == "unlabelled" and split is not None and path not in pseudo:
            p.append(f"{path}: an unlabelled image in split {split} without pseudo boxes (auto-label lost)")
    m = {k: json.loads(v) for k, v in q("SELECT key, value_json FROM metrics WHERE round = 0")}
    rows, state = m.get("autolabel", []), m.get("autolabel_state")
    its = [r["iteration"] for r in rows]
    if its != list(range(1, len(its) + 1)):
        p.append(f"iteration rows {its} are not 1..{len(its)}")
    if sum(r["images_auto_labelled"] for r in rows) != len(pseudo):
        p.append(f"rows count {sum(r['images_auto_labelled'] for r in rows)} auto-labelled images, the store holds "
                 f"{len(pseudo)}")
    if state is not None and int(state["iteration"]) != len(rows) + 1:
        p.append(f"state says iteration {state['iteration']} but {len(rows)} rows are finished")
    share = json.loads((q("SELECT value FROM meta WHERE key = 'autolabel_pseudo_test'").fetchone() or ["[]"])[0])
    val_pseudo = sorted(k for k in pseudo if info[k][0] == "val")
    if sorted(share) != val_pseudo:
        p.append(f"pseudo test share lists {len(share)} images, {len(val_pseudo)} pseudo images are in val")
    return p


# -- running and killing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """Kill after `delay` seconds, or once the store shows `step` (plus `extra` seconds)."""

    delay: float | None = None
    step: str | None = None
    extra: float = 0.0

    def __str__(self) -> str:
        if self.step is not None:
            return f"at step {self.step}" + (f" +{self.extra:.1f}s" if self.extra else "")
        return f"random {self.delay:.1f}s"


def start(argv: Sequence[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        return subprocess.Popen(list(map(str, argv)), cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=child_env(),
                                start_new_session=True)


def run_with_trigger(argv: Sequence[str], cwd: Path, log: Path, trigger: Trigger | None,
                     observe: Callable[[bool], tuple[str, str]], poll: float = 0.01) -> tuple[bool, int, float]:
    """Run until exit, or SIGKILL at the trigger. Returns (killed, return code, seconds)."""
    t0 = time.monotonic()
    proc = start(argv, cwd, log)
    seen: float | None = None
    try:
        while True:
            rc = proc.poll()
            now = time.monotonic() - t0
            if rc is not None:
                return False, rc, now
            if now > PROCESS_TIMEOUT:
                raise TimeoutError(f"{' '.join(map(str, argv))} ran over {PROCESS_TIMEOUT} s")
            fire = False
            if trigger is not None:
                if trigger.step is None:
                    fire = now >= trigger.delay  # type: ignore[operator]
                else:
                    if seen is None and observe(True)[1] == trigger.step:
                        seen = now
                    fire = seen is not None and now >= seen + trigger.extra
            if fire:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
                return rc == -signal.SIGKILL, rc, now
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def log_tail(log: Path, n: int = 600) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-n:].replace("\n", " / ")


@dataclass
class Scenario:
    """A command to kill: how to run it, what step it is in, what must hold, what it ends with."""

    command: str
    argv: list[str]
    cwd: Path
    # (label for the table, step name); observe(True) while the command runs, observe() once it stopped
    observe: Callable[..., tuple[str, str]]
    check: Callable[[], list[str]]
    fingerprint: Callable[[], dict[str, Any]]
    # a finished run with rc != 0 that is fine after a kill (e.g. 'nothing left to import')
    done_message: str | None = None
    # the folder the command writes (its project, simulate's OUT): checking it must leave every file as it was
    watch: Path | None = None
    # folders the command builds aside and renames into place when whole (simulate's copies of its base):
    # after a kill, in flight, not a result; the re-run removes them
    in_flight: Callable[[], list[Path]] = lambda: []
    # whether a re-run went past the point where it removes this in-flight folder (not killed before it)
    passed: Callable[[Path], bool] = lambda folder: True


def _rel(path: Path, root: Path | None) -> str:
    return os.path.relpath(path, root) if root is not None else str(path)


def describe_in_flight(folder: Path, root: Path | None) -> str:
    db = folder / DB
    inside = f"{DB} {db.stat().st_size} bytes" if db.is_file() else f"no {DB}"
    if Path(f"{db}-journal").exists():
        inside += ", a -journal"
    return f"{_rel(folder, root)} ({inside})"


def untouched(scn: Scenario, what: Callable[[], Any]) -> tuple[Any, list[str]]:
    """what(), and the problems it had: an exception (reported as a failure, not raised: one broken
    check must not hide the rest of the table) or any file under `scn.watch` that it created, changed
    or removed."""
    before = tree_state(scn.watch)
    try:
        out, problems = what(), []
    except Exception as e:  # noqa: BLE001
        out, problems = None, [f"the check itself failed: {type(e).__name__}: {e}"]
    after = tree_state(scn.watch)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        problems.append(f"checking changed {len(changed)} files: {', '.join(changed[:4])}")
    return out, problems


def after_kill(scn: Scenario) -> tuple[str, list[str]]:
    """(step label, problems) of a stopped command: what it observes and what its checks say."""
    label, seen = untouched(scn, lambda: scn.observe()[0])
    problems, checked = untouched(scn, scn.check)
    return label or "?", (problems or []) + seen + checked


def campaign(scn: Scenario, run: str, triggers: Sequence[Trigger], reference: dict[str, Any] | None,
             report: Report, log: Path, max_restarts: int = 60) -> dict[str, Any]:
    """Kill `scn` at each trigger in turn (re-running it after each kill), then let it finish; check
    after every kill; compare the final fingerprint with `reference` (when given). Returns it.
    What a kill leaves in flight is stated in its row; the re-run must remove it once it gets there."""
    i = 0
    flying: list[Path] = []  # in flight after the last kill
    for _ in range(max_restarts):
        trig = triggers[i] if i < len(triggers) else None
        killed, rc, secs = run_with_trigger(scn.argv, scn.cwd, log, trig, scn.observe)
        kept = [f"{_rel(f, scn.watch)}, in flight at the last kill, is still there after a re-run that went past it"
                for f in flying if killed and f.exists() and scn.passed(f)]
        if not killed:
            if rc != 0 and not (scn.done_message and scn.done_message in log_tail(log, 2000)):
                report.outcomes.append(Outcome(scn.command, run, str(trig or "-"), scn.observe()[0],
                                               f"exit code {rc}: {log_tail(log)}", False, kill=False))
                return {}
            break
        i += 1
        label, problems = after_kill(scn)
        problems = kept + problems
        flying = scn.in_flight()
        note = "; in flight: " + ", ".join(describe_in_flight(f, scn.watch) for f in flying) if flying else ""
        report.outcomes.append(Outcome(scn.command, run, str(trig), label,
                                       ("killed at %.1fs; store ok" % secs if not problems else
                                        "killed at %.1fs; " % secs + "; ".join(problems[:4])) + note, not problems))
    else:
        report.outcomes.append(Outcome(scn.command, run, "-", scn.observe()[0], "never finished", False, kill=False))
        return {}
    label, problems = after_kill(scn)
    problems += [f"{_rel(f, scn.watch)} is still in flight after the command finished"
                 + (" (it was at the last kill)" if f in flying else "") for f in scn.in_flight()]
    fp, extra = untouched(scn, scn.fingerprint)
    problems += extra
    if reference is not None and fp is not None:
        problems += diff_fingerprints(reference, fp)[:6]
    report.outcomes.append(Outcome(scn.command, run, "(resume to the end)", label,
                                   "final results equal the uninterrupted run" if not problems else
                                   "; ".join(problems), not problems, kill=False))
    return fp or {}


# -- the data and the four commands -----------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    data: Path
    truth: dict[str, list[str]]  # image name -> class names
    n_images: int


def make_workspace(root: Path, n_images: int = 16, image_size: int = 64, seed: int = 0) -> Workspace:
    from boxloop.synthetic import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    anns = make_dataset(data, n_images=n_images, image_size=image_size, seed=seed)
    return Workspace(root, data, {a.image: list(a.labels) for a in anns}, n_images)


def _last_step(db: Path, live: bool = False) -> tuple[int, str] | None:
    rows = read_rows(db, "SELECT id, step FROM rounds ORDER BY id DESC LIMIT 1", live=live)
    return (rows[0][0], rows[0][1]) if rows else None


# simulate builds each run's copy of the base in RUN.XXXXXXXX (tempfile.mkdtemp(prefix=RUN + ".")) and
# renames it to RUN when whole; run names hold no dot
COPY_FOLDER = re.compile(r"(?P<run>[^.]+)\.[a-z0-9_]{8}")


def simulate_scenario(ws: Workspace, out: Path, initial: int = 6, budget: int = 2, rounds: int = 2,
                      steps: int = 4, strategy: str = "localization_aware", semi: str | None = "autolabel") -> Scenario:
    argv = [*BOXLOOP, "simulate", "--dataset", ws.data / "images", "--annotations", ws.data / "annotations",
            "--out", out, "--strategies", strategy, "--initial", str(initial), "--budget", str(budget),
            "--rounds", str(rounds), "--test-fraction", "0.25", *tiny_args(steps)]
    if semi:
        argv += ["--semi", semi]

    run = (f"{strategy}+{semi}" if semi else strategy).replace("+", "_")  # OUT/seedN/RUN

    def folders() -> list[Path]:
        return sorted(d for d in out.glob("seed*/*") if d.is_dir())

    def in_flight() -> list[Path]:
        """simulate's copies of the base that a kill stopped before their rename to RUN."""
        return [d for d in folders() if (m := COPY_FOLDER.fullmatch(d.name)) and m["run"] == run]

    def dbs() -> list[Path]:
        """The databases of the base and of the finished run; never one of a copy in flight."""
        return sorted((d / DB for d in folders() if d.name in ("base", run) and (d / DB).is_file()),
                      key=lambda p: (p.parent.name != "base", str(p)))

    def passed(copy: Path) -> bool:
        """The re-run came back to the copy step: it renamed a new copy to RUN or began one (and the
        copy step removes the old ones before it begins)."""
        return (copy.parent / run).exists() or any(d.parent == copy.parent and d != copy for d in in_flight())

    def observe(live: bool = False) -> tuple[str, str]:
        for d in reversed(in_flight()):  # a copy under way (the step pause holds it with its database begun)
            if (d / DB).is_file() and not (d.parent / run).exists():
                return f"{d.parent.name}/{d.name} copy", "copy"
        for db in reversed(dbs()):  # the strategy's run once it exists, else the base
            last = _last_step(db, live)
            if last is not None:
                base = db.parent.name == "base"
                return f"{db.parent.name} r{last[0]} {last[1]}", ("base " if base else "") + str(last[1])
        return "init", "init"

    def check() -> list[str]:
        problems = []
        flying = in_flight()
        for d in folders():
            if d.name == run and not (d / DB).is_file():
                problems.append(f"{d.relative_to(out)}: a finished run without its {DB}")
            elif d.name == "base" and not (d / DB).is_file() and (d.parent / run).exists():
                problems.append(f"{d.relative_to(out)}: the base of a run without its {DB}")
            elif d.name not in ("base", run) and d not in flying:
                problems.append(f"{d.relative_to(out)}: neither the base, the run nor a copy in flight")
        for db in dbs():
            problems += integrity_problems(db)
            problems += check_loop_labels(db, ws.truth, initial, budget)
        return problems

    def fingerprint() -> dict[str, Any]:
        res = json.loads((out / "results.json").read_text())
        return {"results": _json_strip(res, {"project"}),
                **{db.parent.name: project_fingerprint(db.parent) for db in dbs()}}

    return Scenario("simulate", argv, ws.root, observe, check, fingerprint, watch=out, in_flight=in_flight,
                    passed=passed)


def init_partial(ws: Workspace, project: Path, labelled: int) -> None:
    """A project where only the first `labelled` images carry labels (the rest: the pool)."""
    ann = ws.root / f"ann_first{labelled}"
    if not ann.exists():
        ann.mkdir()
        for xml in sorted((ws.data / "annotations").glob("*.xml"))[:labelled]:
            shutil.copy2(xml, ann / xml.name)
    subprocess.run([*BOXLOOP, "init", project, "--images", ws.data / "images", "--annotations", ann,
                    "--test-fraction", "0.25"], check=True, cwd=ws.root, env=child_env(), capture_output=True)


def _human_labels(db: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for path, c in read_rows(db, "SELECT i.path, c.name FROM boxes b JOIN images i ON i.id = b.image_id JOIN "
                                 "classes c ON c.id = b.class_id WHERE b.active = 1 AND b.source = 'human'") or []:
        out[path].append(c)
    return dict(out)


def autolabel_scenario(ws: Workspace, project: Path, human_before: dict[str, list[str]],
                       threshold: float) -> Scenario:
    argv = [*BOXLOOP, "autolabel", project, "--threshold", str(threshold), "--iterations", "2", "--steps-first", "4",
            "--steps-increment", "2", "--steps-max", "8", *tiny_args(None)]
    db = project / DB

    def observe(live: bool = False) -> tuple[str, str]:
        rows = read_rows(db, "SELECT value_json FROM metrics WHERE round = 0 AND key = 'autolabel_state'", live=live)
        if not rows:
            return "start", "start"
        st = json.loads(rows[0][0])
        return f"it{st['iteration']} {st['phase']}", st["phase"]

    def check() -> list[str]:
        return integrity_problems(db) + check_autolabel_labels(db, human_before)

    def fingerprint() -> dict[str, Any]:
        doc = json.loads((project / "autolabel.json").read_text())
        return {"autolabel.json": _json_strip(doc, {"seconds"}), "project": project_fingerprint(project)}

    return Scenario("autolabel", argv, ws.root, observe, check, fingerprint, watch=project)


def train_scenario(ws: Workspace, project: Path, labels_before: dict[str, Any], steps: int = 8) -> Scenario:
    argv = [*BOXLOOP, "train", project, *tiny_args(steps)]
    db = project / DB

    def observe(live: bool = False) -> tuple[str, str]:
        rows = read_rows(db, "SELECT value FROM meta WHERE key = 'current_checkpoint'", live=live)
        if rows:
            return "test-set evaluation", "evaluate"
        lasts = list((project / "models").glob("*/last.pt")) if (project / "models").exists() else []
        return ("train:last.pt-written" if lasts else "train:no-checkpoint-yet"), "train"

    def check() -> list[str]:
        p = integrity_problems(db)
        now = _label_state(db)
        if now != labels_before:
            p.append("training changed the labels: " + "; ".join(diff_fingerprints(labels_before, now)[:3]))
        return p

    return Scenario("train", argv, ws.root, observe, check, lambda: project_fingerprint(project), watch=project)


def _label_state(db: Path) -> dict[str, Any]:
    return {"images": read_rows(db, "SELECT path, split, status, round_labelled FROM images ORDER BY path"),
            "boxes": read_rows(db, "SELECT image_id, class_id, source, round, active, x1, y1, x2, y2 FROM boxes "
                                   "ORDER BY id"),
            "queries": read_rows(db, "SELECT round, image_id, state FROM queries ORDER BY id")}


def prepare_import(ws: Workspace, template: Path, labelled: int = 8, budget: int = 3) -> None:
    """template/project with an open query batch in template/batch, answered with the truth."""
    template.mkdir(parents=True)
    init_partial(ws, template / "project", labelled)
    subprocess.run([*BOXLOOP, "query", template / "project", "--budget", str(budget), "--out", template / "batch",
                    *tiny_args(4)], check=True, cwd=ws.root, env=child_env(), capture_output=True)
    manifest = json.loads((template / "batch" / "batch.json").read_text())
    for name, key in manifest["images"].items():
        xml = ws.data / "annotations" / (Path(key).stem + ".xml")
        shutil.copy2(xml, template / "batch" / (Path(name).stem + ".xml"))


def import_scenario(ws: Workspace, trial: Path) -> Scenario:
    project, batch = trial / "project", trial / "batch"
    argv = [*BOXLOOP, "import", project, "--annotations", batch]
    db = project / DB
    queried = json.loads((batch / "batch.json").read_text())["images"].values()

    def observe(live: bool = False) -> tuple[str, str]:
        last = _last_step(db, live)
        step = "?" if last is None else str(last[1])
        return f"r{last[0] if last else '?'} {step}", step

    def check() -> list[str]:
        p = integrity_problems(db)
        p += check_loop_labels(db, ws.truth, None, None)
        status = dict(read_rows(db, "SELECT path, status FROM images") or [])
        done = [k for k in queried if status[k] == "labelled"]
        if done and len(done) != len(queried):
            p.append(f"half an import: {len(done)} of {len(queried)} answered images are labelled")
        return p

    return Scenario("import", argv, ws.root, observe, check, lambda: project_fingerprint(project),
                    done_message="no open query batch", watch=trial)


# -- the plans ------------------------------------------------------------------------------------


def _timed(argv: Sequence[str], cwd: Path, log: Path) -> float:
    t0 = time.monotonic()
    proc = start(argv, cwd, log)
    rc = proc.wait(timeout=PROCESS_TIMEOUT)
    if rc != 0:
        raise RuntimeError(f"uninterrupted run failed (exit {rc}): {log_tail(log, 3000)}")
    return time.monotonic() - t0


DEFAULT_PLAN = {"simulate_steps": 1, "simulate_random": 16, "autolabel_steps": 1, "autolabel_random": 6, "train": 8,
                "import": 8}
QUICK_PLAN = {"simulate_steps": 0, "simulate_random": 0, "autolabel_steps": 0, "autolabel_random": 0, "train": 3,
              "import": 3}


def kill_trials(name: str, make: Callable[[Path], Scenario], template: Path | None, root: Path, kills: int,
                delay: Callable[[], float], per_trial: int, reference: dict[str, Any], report: Report,
                logs: Path) -> None:
    """Random-moment kills, at most `per_trial` in each fresh trial (a copy of `template`, or a new
    folder), each trial resumed to its end and compared with `reference`; trials go on until `kills`
    kills have landed (a run that finishes before its trigger just ends its trial)."""
    first = report.kills
    for t in range(4 * kills):
        left = kills - (report.kills - first)
        if left <= 0:
            return
        d = root / f"{name}_{t}"
        if template is not None:
            shutil.copytree(template, d)
        trig = [Trigger(delay=delay()) for _ in range(min(per_trial, left))]
        campaign(make(d), f"trial{t}", trig, reference, report, logs / f"{name}_{t}.log")


def run_harness(root: Path, plan: dict[str, int] | None = None, seed: int = 0, echo: Callable[[str], None] = print
                ) -> Report:
    """Kill each command as often as `plan` says (keys of DEFAULT_PLAN; 63 kills by default);
    returns the report."""
    plan = {**DEFAULT_PLAN, **(plan or {})}
    rng = random.Random(seed)
    report = Report()
    ws = make_workspace(root)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)

    # simulate: reference, then one campaign killed at every step of every round, then random moments
    if plan["simulate_steps"] or plan["simulate_random"]:
        ref = simulate_scenario(ws, root / "sim_ref")
        t_ref = _timed(ref.argv, ws.root, logs / "sim_ref.log")
        echo(f"simulate: uninterrupted run {t_ref:.0f}s")
        ref_fp = ref.fingerprint()
        for c in range(plan["simulate_steps"]):
            # base r0: train evaluate; its copy to the strategy's run; the run's r0: predict select oracle
            # semi; r1: all six; r2: train evaluate
            order = ["base train", "base evaluate", "copy"] + ["predict", "select", "oracle", "semi"] + \
                ["train", "evaluate", "predict", "select", "oracle", "semi"] + ["train", "evaluate"]
            trig = [Trigger(step=s, extra=rng.uniform(0.2, 2.5) if s.endswith("train") else 0.0) for s in order]
            scn = simulate_scenario(ws, root / f"sim_steps{c}")
            campaign(scn, f"steps{c}", trig, ref_fp, report, logs / f"sim_steps{c}.log")
            echo(f"simulate steps{c}: {report.kills} kills so far")
        if plan["simulate_random"]:
            kill_trials("sim_random", lambda d: simulate_scenario(ws, d), None, root, plan["simulate_random"],
                        lambda: rng.uniform(0.1, 0.95) * t_ref, 4, ref_fp, report, logs)
            echo(f"simulate random: {report.kills} kills so far")

    if plan["autolabel_steps"] or plan["autolabel_random"]:
        template = root / "al_template"
        init_partial(ws, template, labelled=8)
        human = _human_labels(template / DB)
        thr = 0.1
        ref_dir = root / "al_ref"
        shutil.copytree(template, ref_dir)
        ref = autolabel_scenario(ws, ref_dir, human, thr)
        t_ref = _timed(ref.argv, ws.root, logs / "al_ref.log")
        ref_fp = ref.fingerprint()
        echo(f"autolabel: uninterrupted run {t_ref:.0f}s, {len(ref_fp['autolabel.json']['iterations'])} iterations")
        for c in range(plan["autolabel_steps"]):
            d = root / f"al_steps{c}"
            shutil.copytree(template, d)
            trig = [Trigger(step=s, extra=rng.uniform(0.2, 2.0) if s == "train" else 0.0)
                    for s in ("train", "evaluate", "label") * 2]
            campaign(autolabel_scenario(ws, d, human, thr), f"steps{c}", trig, ref_fp, report,
                     logs / f"al_steps{c}.log")
        if plan["autolabel_random"]:
            kill_trials("al_random", lambda d: autolabel_scenario(ws, d, human, thr), template, root,
                        plan["autolabel_random"], lambda: rng.uniform(0.1, 0.95) * t_ref, 3, ref_fp, report, logs)
        echo(f"autolabel: {report.kills} kills so far")

    if plan["train"]:
        template = root / "train_template"
        subprocess.run([*BOXLOOP, "init", template, "--images", ws.data / "images", "--annotations",
                        ws.data / "annotations", "--test-fraction", "0.25"], check=True, cwd=ws.root,
                       env=child_env(), capture_output=True)
        before = _label_state(template / DB)
        ref_dir = root / "train_ref"
        shutil.copytree(template, ref_dir)
        ref = train_scenario(ws, ref_dir, before)
        t_ref = _timed(ref.argv, ws.root, logs / "train_ref.log")
        ref_fp = ref.fingerprint()
        echo(f"train: uninterrupted run {t_ref:.0f}s")
        kill_trials("train_random", lambda d: train_scenario(ws, d, before), template, root, plan["train"],
                    lambda: rng.uniform(0.15, 0.85) * t_ref, 2, ref_fp, report, logs)
        echo(f"train: {report.kills} kills so far")

    if plan["import"]:
        template = root / "import_template"
        prepare_import(ws, template)
        ref_dir = root / "import_ref"
        shutil.copytree(template, ref_dir)
        ref = import_scenario(ws, ref_dir)
        t_ref = _timed(ref.argv, ws.root, logs / "import_ref.log")
        ref_fp = ref.fingerprint()
        echo(f"import: uninterrupted run {t_ref:.1f}s")
        # most of an import is starting Python; aim at its last part, where it writes
        kill_trials("import", lambda d: import_scenario(ws, d), template, root, plan["import"],
                    lambda: rng.uniform(0.5, 1.0) * t_ref, 1, ref_fp, report, logs)
        echo(f"import: {report.kills} kills so far")
    return report


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", nargs="?", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated plan keys to run (others 0)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="boxloop-kills-"))
    plan = dict(QUICK_PLAN) if args.quick else None
    if args.only:
        base = DEFAULT_PLAN
        keep = set(args.only.split(","))
        plan = {k: (v if k in keep else 0) for k, v in base.items()}
    rep = run_harness(work, plan, seed=args.seed)
    print(rep.table())
    sys.exit(0 if rep.ok else 1)
