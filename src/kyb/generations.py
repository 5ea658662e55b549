"""Folders of numbered generations with an atomic switch: how every index this project saves is
written (the reference index, the band index).

A save writes a whole new generation into a hidden staging folder, renames it into place, then
points ``CURRENT`` at it with an atomic replace, with an fsync at each step: a reader sees the old
generation or the new one, never a mix, and a kill at any point leaves the last published one
current. The previous generation is kept (a reader may still be loading it); older ones are removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "publish_generation", "stage_generation", "writer_lock"]

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Makes the entries of directory ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_generation(root: Path, *after: int) -> tuple[int, Path, Path]:
    """(number, staging folder, final folder) of the next generation of ``root``: past ``after`` and
    past every generation folder there (a kill between a rename and the CURRENT switch leaves a
    newer, unused folder behind: numbers are never reused). The staging folder is created empty."""
    existing = [int(p.name[4:]) for p in root.glob("gen-*") if p.name[4:].isdigit()]
    generation = max([0, *after, *existing]) + 1
    staging = root / f".gen-{generation:06d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return generation, staging, root / f"gen-{generation:06d}"


def publish_generation(root: Path, staging: Path, final: Path, manifest: dict[str, Any], *, keep: Path | None) -> None:
    """Writes ``manifest.json`` into ``staging``, renames it to ``final``, makes it ``CURRENT`` and
    removes the generations other than ``final`` and ``keep`` (the one that was current)."""
    with open(staging / "manifest.json", "w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(root)
    pointer = root / ".CURRENT.tmp"
    with open(pointer, "w") as handle:
        handle.write(final.name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer, root / "CURRENT")
    fsync_dir(root)
    for old in sorted(root.glob("gen-*")):
        if old.name not in {final.name, keep.name if keep is not None else ""}:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Holds the index folder's writer lock: one writing process (or thread) at a time.

    Two processes saving the same folder at once would pick the same next generation and delete
    each other's staging folder, so every writer (ingest, delete, reindex, codebook training) takes
    this ``flock`` first and waits for the other to finish. The kernel drops the lock when a process
    dies, so a crash never leaves the folder locked. Readers never take it.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".writer.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another writer of %s", root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
