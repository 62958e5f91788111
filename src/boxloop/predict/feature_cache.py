"""A disk cache of a frozen body's feature maps, one file per (image, body, size, view, precision).

Why: the default fcos_lite's frozen EfficientNet-Lite0 body is 1.49 of its 1.87 GFLOPs per 320 px
image, and the loop sees the same images round after round (the pool scored every round, the
labelled set trained on every round). Its maps cannot change while the pixels and weights do not.

Key: blake2b of (the image file's SHA-256, the body's identity -- architecture, input transform,
memory format and weights, `FeatureMixin.body_identity` --, the image size asked for, the view, e.g.
"hflip", and the precision the maps were computed in). Anything else -> another key, never an
error: a rewritten image (new bytes), another backbone, other weights, another size. File hashes are
remembered per path with (size, mtime_ns, ctime_ns, inode) in `files.json`, as the embedding cache
does; any write changes ctime, so a rewrite is always noticed.

Format, written by hand (numpy is enough; safetensors is installed but has no checksum, so a torn
or bit-flipped payload would be read as features): b"BXFEAT01", the header's length (u64, little
endian), a JSON header (levels: name, dtype, shape, offset, bytes; the caller's meta; the payload's
length and CRC-32), padded to 64 bytes, then the payload. Read through a numpy memmap; a wrong magic,
a size that disagrees with the header or a CRC mismatch -> the entry is deleted, recomputed by the
caller, one warning each. Maps computed in float32 are stored as float16: relative error at most
2**-11 (half an ulp of its 10-bit mantissa; absolute 2**-25 in the subnormal range below 6.1e-5);
maps beyond float16's range (65504) are not stored. Maps computed in bfloat16 (CPU inference with
`cpu_bf16`) are stored as bfloat16: bit for bit. 320x320 px into Lite0's strides 8, 16, 32
(40 + 112 + 320 channels) is 140,800 values: 281.6 KB an image, 225 KB at 4:3 (320x240, padded to 256).

Writes go to a temporary file in the entry's folder, then `os.replace`: a kill leaves a `.tmp`
file no reader opens (removed once an hour old), never a half entry under an entry's name. No
fsync: a killed process's writes still reach the file; only a power cut can tear one, and the CRC
catches that. A folder that cannot be written (read-only, full) -> one warning, the run goes on
uncached (entries already there are still read). Bounded: past `max_bytes` the least recently used
entries (mtime, touched on every hit) go until 80% of it is left. Hits and misses add up in
`stats.json` (`boxloop status`); counts from processes that flush at the same moment may be lost.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureCache", "cache_dir", "storable", "cache_status", "clear_cache", "DEFAULT_MAX_BYTES", "FP16_RTOL"]

log = logging.getLogger("boxloop")

MAGIC = b"BXFEAT01"
SUFFIX = ".bxf"
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 8 << 30  # about 30,000 images at 320 px
FP16_RTOL = 2.0 ** -11  # float16 rounding: half an ulp of a 10-bit mantissa
FP16_ATOL = 2.0 ** -25  # half the spacing of float16's subnormals
STALE_TMP_S = 3600.0
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def cache_dir(project_dir: Path) -> Path:
    """Where a project keeps body features (beside cache/embeddings)."""
    return Path(project_dir) / "cache" / "features"


def _stat_key(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)]


def _entries(root: Path) -> list[tuple[Path, int, float]]:
    """(path, bytes, last used) of every entry."""
    out = []
    if not root.is_dir():
        return out
    for shard in os.scandir(root):
        if not shard.is_dir():
            continue
        for e in os.scandir(shard.path):
            if e.name.endswith(SUFFIX):
                try:
                    st = e.stat()
                except FileNotFoundError:  # evicted by another process meanwhile
                    continue
                out.append((Path(e.path), st.st_size, st.st_mtime))
    return out


def cache_status(project_dir: Path, clear: bool = False) -> dict[str, Any]:
    """A project's feature cache for `boxloop status`: entries, bytes, the hit rate recorded so far and,
    after `clear` (which deletes it first), the bytes freed."""
    root = cache_dir(project_dir)
    freed = clear_cache(root) if clear else 0
    entries = _entries(root)
    stats = _read_json(root / "stats.json")
    hits, misses = int(stats.get("hits", 0)), int(stats.get("misses", 0))
    return {"entries": len(entries), "bytes": sum(s for _, s, _ in entries), "hits": hits, "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else None, "freed": freed, "folder": str(root)}


def clear_cache(root: Path) -> int:
    """Delete every entry, the file-hash index and the counts; the bytes freed."""
    root = Path(root)
    freed = sum(s for _, s, _ in _entries(root))
    if root.is_dir():
        shutil.rmtree(root)
    return freed


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a cache, not a record: start again


class FeatureCache:
    """Get and put maps (level name -> CHW tensor) with a JSON-able `meta`, by key; see the module docstring."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.writable = True
        self.hits = 0
        self.misses = 0
        self._total: int | None = None
        self._files: dict[str, list] | None = None
        self._files_changed = False
        self._warned_range = False

    # -- keys ------------------------------------------------------------------------------------
    def image_hash(self, path: Path) -> str:
        """The SHA-256 of the file's bytes, recomputed only when its stat changed."""
        from boxloop.images import file_sha256

        if self._files is None:
            self._files = _read_json(self.root / "files.json")
        name = str(Path(path).resolve())
        st = _stat_key(os.stat(name))
        entry = self._files.get(name)
        if entry is not None and entry[:4] == st:
            return entry[4]
        sha = file_sha256(name)
        self._files[name] = [*st, sha]
        self._files_changed = True
        return sha

    @staticmethod
    def key(image_sha: str, identity: str, image_size: int, view: str, precision: str) -> str:
        import hashlib

        text = f"{FORMAT_VERSION}|{image_sha}|{identity}|{image_size}|{view}|{precision}"
        return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    # -- read ------------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """(maps, meta), or None on a miss or a damaged entry (deleted, one warning)."""
        path = self._path(key)
        try:
            got = _read_entry(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("feature cache: damaged entry %s (%s): computing it again", path, err)
            self._drop(path)
            self.misses += 1
            return None
        self.hits += 1
        try:
            os.utime(path)  # last used, for the LRU
        except OSError:
            pass  # a read-only cache still serves hits
        return got

    def _drop(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    # -- write -----------------------------------------------------------------------------------
    def refuse_range(self) -> None:
        if not self._warned_range:
            log.warning("feature cache: maps beyond float16's range (or not finite): not cached")
            self._warned_range = True

    def put(self, key: str, maps: dict[str, Tensor], meta: dict[str, Any], checked: bool = False) -> bool:
        """Store the maps (float32 -> float16, bfloat16 kept); False when not stored. `checked`: the
        caller has seen every map finite after `storable` (one pass over them, not two)."""
        if not self.writable:
            return False
        arrays, levels, offset = [], [], 0
        for name, t in maps.items():
            stored = storable(t)
            if not checked and not torch.isfinite(stored).all():
                self.refuse_range()
                return False
            raw = stored.contiguous().view(torch.uint8).numpy().tobytes()
            levels.append({"name": name, "dtype": str(stored.dtype).removeprefix("torch."),
                           "shape": list(stored.shape), "offset": offset, "bytes": len(raw)})
            arrays.append(raw)
            offset += len(raw)
        payload = b"".join(arrays)
        header = json.dumps({"levels": levels, "meta": meta, "data_bytes": len(payload),
                             "crc32": zlib.crc32(payload)}).encode()
        start = len(MAGIC) + 8 + len(header)
        header += b" " * (-start % 64)
        blob = MAGIC + struct.pack("<Q", len(header)) + header + payload
        path = self._path(key)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                _write(f, blob)
            os.replace(tmp, path)
        except OSError as err:
            self._give_up(err)
            try:
                tmp.unlink()
            except OSError:
                pass
            return False
        if self._total is None:
            self._total = sum(s for _, s, _ in _entries(self.root))
        else:
            self._total += len(blob)
        if self._total > self.max_bytes:
            self.evict()
        return True

    def _give_up(self, err: OSError) -> None:
        self.writable = False
        log.warning("feature cache %s cannot be written (%s): going on without caching", self.root, err)

    def evict(self) -> int:
        """Delete the least recently used entries until 80% of max_bytes is left, and stale tmp files."""
        entries = sorted(_entries(self.root), key=lambda e: e[2])
        total = sum(s for _, s, _ in entries)
        target = 0.8 * self.max_bytes
        removed = 0
        for path, size, _ in entries:
            if total <= target:
                break
            self._drop(path)
            total -= size
            removed += 1
        now = time.time()
        for shard in self.root.iterdir() if self.root.is_dir() else ():
            for tmp in shard.glob(".*.tmp") if shard.is_dir() else ():
                try:
                    if now - tmp.stat().st_mtime > STALE_TMP_S:
                        tmp.unlink()
                except OSError:
                    pass
        self._total = total
        return removed

    def flush(self) -> None:
        """Add this run's hits and misses to stats.json and save the file-hash index (best effort)."""
        if not self.writable or (self.hits + self.misses == 0 and not self._files_changed):
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            stats = _read_json(self.root / "stats.json")
            stats = {"hits": int(stats.get("hits", 0)) + self.hits, "misses": int(stats.get("misses", 0)) + self.misses}
            _atomic_json(self.root / "stats.json", stats)
            if self._files_changed and self._files is not None:
                _atomic_json(self.root / "files.json", self._files)
        except OSError as err:
            self._give_up(err)
            return
        self.hits = self.misses = 0
        self._files_changed = False


def storable(t: Tensor) -> Tensor:
    """The map as an entry holds it: float16, or bfloat16 when computed so (on the cpu)."""
    t = t.detach().cpu()
    return t if t.dtype in (torch.bfloat16, torch.float16) else t.to(torch.float16)


def _write(f: Any, blob: bytes) -> None:
    """One place every entry's bytes go through (a test kills the process here)."""
    f.write(blob)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_entry(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Parse and check one entry; ValueError when it is damaged."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    head = len(MAGIC) + 8
    if mm.shape[0] < head or bytes(mm[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a feature-cache entry")
    (hlen,) = struct.unpack("<Q", bytes(mm[len(MAGIC):head]))
    if head + hlen > mm.shape[0]:
        raise ValueError("truncated header")
    header = json.loads(bytes(mm[head:head + hlen]))
    start = head + hlen
    if mm.shape[0] != start + int(header["data_bytes"]):
        raise ValueError(f"{mm.shape[0]} bytes, the header says {start + int(header['data_bytes'])}")
    data = mm[start:]
    if zlib.crc32(data) != int(header["crc32"]):
        raise ValueError("checksum mismatch")
    maps: dict[str, Tensor] = {}
    for lv in header["levels"]:
        buf = np.array(data[lv["offset"]:lv["offset"] + lv["bytes"]])  # one copy out of the map
        maps[lv["name"]] = torch.from_numpy(buf).view(_DTYPES[lv["dtype"]]).reshape(lv["shape"])
    return maps, header["meta"]
