"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Every file the project writes for others to read (checkpoints, codecs, metrics, result records, leaderboards, plots,
overlays, benchmark reports) goes through `atomic_path`: the content goes to a uniquely named temporary file beside
the destination, is flushed to disk, and is renamed over the destination (`os.replace`: atomic within one file
system). The writer creates the temporary file itself, so it gets the umask's permissions like any new file;
`tempfile.mkstemp` would make it owner-only (0600), and a results folder or codec shared by a team would be
unreadable to everyone else. A failed or interrupted write removes the temporary file and leaves the destination as
it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write `path`'s new content to; renames it over `path` when the block succeeds.

    The temporary name ends in ".tmp", so writers that guess a format from the suffix (matplotlib) need it given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{path}: the writer produced no file at {tmp}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any], sort_keys: bool = True) -> None:
    """`payload` as indented JSON (keys sorted unless `sort_keys=False`), with a final newline."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
