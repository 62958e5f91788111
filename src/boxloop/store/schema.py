"""The store's schema: its migrations (append-only), the constants that name its values, and
which images and boxes each `annotations(subset)` returns."""

from __future__ import annotations

import datetime as _dt

from boxloop.structures import Source

DB_NAME = "boxloop.db"
LOCK_NAME = ".lock"  # the long-running writers' lock (store.Core.writer_lock)
IMPORT_LOCK = ".import.lock"  # import's own: imports one at a time, beside training
SPLITS = ("test", "train", "val")  # NULL split = the unlabelled pool
STATUSES = ("unlabelled", "labelled", "partial")
SOURCES = tuple(s.value for s in Source)


# Each migration takes the schema from version i to i+1. Append; never edit a released one.
MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT
    );
    CREATE TABLE classes (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE images (
        id             INTEGER PRIMARY KEY,
        path           TEXT NOT NULL UNIQUE,
        sha256         TEXT,
        width          INTEGER NOT NULL CHECK (width > 0),
        height         INTEGER NOT NULL CHECK (height > 0),
        split          TEXT CHECK (split IN ('test', 'train', 'val')),
        status         TEXT NOT NULL DEFAULT 'unlabelled'
                       CHECK (status IN ('unlabelled', 'labelled', 'partial')),
        round_labelled INTEGER
    );
    CREATE TABLE boxes (
        id          INTEGER PRIMARY KEY,
        image_id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        class_id    INTEGER REFERENCES classes(id),
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        difficult   INTEGER NOT NULL DEFAULT 0,
        truncated   INTEGER NOT NULL DEFAULT 0,
        source      TEXT NOT NULL CHECK (source IN ('human', 'pseudo', 'predicted', 'background')),
        round       INTEGER NOT NULL DEFAULT 0,
        model       TEXT,
        score       REAL,
        loc_quality REAL,
        weight      REAL NOT NULL DEFAULT 1.0,
        active      INTEGER NOT NULL DEFAULT 1,
        CHECK (class_id IS NOT NULL OR source = 'background')
    );
    CREATE TABLE rounds (
        id          INTEGER PRIMARY KEY,
        step        TEXT,
        status      TEXT NOT NULL DEFAULT 'running',
        started     TEXT,
        finished    TEXT,
        config_json TEXT
    );
    CREATE TABLE queries (
        id       INTEGER PRIMARY KEY,
        round    INTEGER NOT NULL,
        batch    INTEGER NOT NULL DEFAULT 0,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        box_id   INTEGER REFERENCES boxes(id) ON DELETE SET NULL,
        box_index INTEGER,  -- a box query: index into the round's stored Detections of the image
        strategy TEXT,
        score    REAL,
        state    TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered', 'stale'))
    );
    CREATE TABLE metrics (
        round      INTEGER NOT NULL,
        key        TEXT NOT NULL,
        value_json TEXT NOT NULL,
        PRIMARY KEY (round, key)
    );
    CREATE TABLE predictions (
        round    INTEGER NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        model    TEXT NOT NULL DEFAULT '',
        blob     BLOB NOT NULL,
        PRIMARY KEY (round, image_id, model)
    );
    CREATE INDEX boxes_image ON boxes(image_id, active, source);
    CREATE INDEX boxes_class ON boxes(active, source, class_id);
    CREATE INDEX boxes_source_image ON boxes(active, source, image_id);
    CREATE INDEX images_split_status ON images(split, status);
    CREATE INDEX queries_round ON queries(round, state);
    """,
    # 1 -> 2: each image file's size and mtime (a cheap first check that it is still the file its
    # labels were made on; sha256 decides), and the images left out because they could not be used.
    """
    ALTER TABLE images ADD COLUMN file_size INTEGER;
    ALTER TABLE images ADD COLUMN mtime_ns INTEGER;
    CREATE TABLE skipped_images (
        path   TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        stage  TEXT NOT NULL,
        at     TEXT NOT NULL
    );
    """,
    # 2 -> 3: answers a labelling tool sent live (`boxloop serve`): one row per tool annotation, with
    # who and when, a digest of its content (the same webhook twice changes nothing) and the boxes it
    # made (a deletion retires exactly those).
    """
    CREATE TABLE tool_annotations (
        tool          TEXT NOT NULL,
        task_id       TEXT NOT NULL,
        annotation_id TEXT NOT NULL,
        image_id      INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        who           TEXT,
        at            TEXT,
        digest        TEXT NOT NULL,
        box_ids_json  TEXT NOT NULL DEFAULT '[]',
        deleted       INTEGER NOT NULL DEFAULT 0,
        seq           INTEGER NOT NULL,
        PRIMARY KEY (tool, task_id, annotation_id)
    );
    CREATE INDEX tool_annotations_image ON tool_annotations(image_id, deleted);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Which boxes and images each `annotations(subset)` returns. Images: an SQL condition on `i`.
SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # every image a human labelled completely (negatives included), human boxes only
    "labelled": ("i.status = 'labelled'", ("human",)),
    "train": ("i.status = 'labelled' AND i.split = 'train'", ("human",)),
    "val": ("i.status = 'labelled' AND i.split = 'val'", ("human",)),
    "test": ("i.status = 'labelled' AND i.split = 'test'", ("human",)),
    # auto-labelled images that no human has labelled yet, their pseudo boxes
    "pseudo": (
        "i.status != 'labelled' AND EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id "
        "AND p.active = 1 AND p.source = 'pseudo')",
        ("pseudo",),
    ),
    # images with box-level answers: checked boxes plus the unchecked predictions beside them
    "partial": ("i.status = 'partial'", ("human", "predicted")),
    # images holding predictions not yet checked
    "predicted": (
        "EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id AND p.active = 1 "
        "AND p.source = 'predicted')",
        ("predicted",),
    ),
    # everything that counts as a label: human-labelled images plus auto-labelled ones
    "all": (
        "i.status = 'labelled' OR EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id "
        "AND p.active = 1 AND p.source IN ('human', 'pseudo'))",
        ("human", "pseudo"),
    ),
}


# Named sets of images, each defined here once: (SQL condition on images `i`, order).
IMAGE_SETS: dict[str, tuple[str, str]] = {
    # the active-learning pool: what a person may still be asked about (not fully labelled, not
    # test, not val; partially labelled images stay in it)
    "pool": ("i.status != 'labelled' AND (i.split IS NULL OR i.split = 'train')", "i.id"),
    # what TSODA may still auto-label: unlabelled, outside every split, holding no pseudo box
    "autolabel_pool": ("i.status = 'unlabelled' AND i.split IS NULL AND NOT EXISTS (SELECT 1 FROM boxes b "
                       "WHERE b.image_id = i.id AND b.active = 1 AND b.source = 'pseudo')", "i.id"),
    # the semi-supervised student's unlabelled images: unlabelled, never test or val
    "unlabelled_pool": ("i.status = 'unlabelled' AND (i.split IS NULL OR i.split = 'train')", "i.id"),
    # the images the detector learns from: labelled (or partially) and in the train split
    "labelled_train": ("i.status IN ('labelled', 'partial') AND i.split = 'train'", "i.id"),
    # what a simulation may keep as its initial labels: labelled, outside the test set
    "labelled_not_test": ("i.status = 'labelled' AND (i.split IS NULL OR i.split != 'test')", "i.path"),
}

def split_sql(script: str) -> list[str]:
    """Statements of a migration (none holds a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def opt_float(v: float | None) -> float | None:
    return None if v is None else float(v)
