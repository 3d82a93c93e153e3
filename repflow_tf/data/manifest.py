"""The per-split manifest: class names, counts, rejected videos and records per shard.

The converter writes `<split_dir>/manifest.json` atomically (`repflow_tf.fileio`); the reader
uses it to find the shards and to check that each shard still holds the records it was written with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

from repflow_tf.data.schema import MANIFEST_NAME, DataError
from repflow_tf.fileio import write_json_atomic

FORMAT = "repflow_tf.video/1"


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard: its file name (relative to the manifest), record count and size in bytes."""

    file: str
    num_records: int
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A listed video that was not converted, and why."""

    path: str
    label: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a converted split holds. `num_listed == num_accepted + num_rejected` always.

    >>> shard = ShardInfo("train-00000-of-00001.tfrecord", num_records=2, num_bytes=9)
    >>> rejection = Rejection("x.mp4", "left", "missing file")
    >>> m = Manifest("train", ("left", "right"), (shard,), {"left": 1, "right": 1}, (rejection,), 3)
    >>> m.num_accepted, m.num_rejected, m.num_classes
    (2, 1, 2)
    """

    split: str
    class_names: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    counts_per_class: dict[str, int]
    rejected: tuple[Rejection, ...]
    num_listed: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_accepted(self) -> int:
        return sum(shard.num_records for shard in self.shards)

    @property
    def num_rejected(self) -> int:
        return len(self.rejected)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "split": self.split,
            "class_names": list(self.class_names),
            "num_listed": self.num_listed,
            "num_accepted": self.num_accepted,
            "num_rejected": self.num_rejected,
            "counts_per_class": self.counts_per_class,
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
            "rejected": [dataclasses.asdict(rejection) for rejection in self.rejected],
            "options": self.options,
        }


def manifest_path(path: str) -> str:
    """`path` itself if it names a file, else `<path>/manifest.json`."""
    return os.path.join(path, MANIFEST_NAME) if tf.io.gfile.isdir(path) else path


def write_manifest(manifest: Manifest, directory: str) -> str:
    """Writes `<directory>/manifest.json` atomically and returns its path."""
    path = os.path.join(directory, MANIFEST_NAME)
    write_json_atomic(path, manifest.to_json())
    return path


def load_manifest(path: str) -> Manifest:
    """Reads and validates a manifest (a `manifest.json` or the split directory holding it).

    Raises `DataError` naming the file and the field when it is missing or malformed.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> shard = ShardInfo("val-00000-of-00001.tfrecord", num_records=1, num_bytes=5)
    >>> m = Manifest("val", ("a",), (shard,), {"a": 1}, rejected=(), num_listed=1)
    >>> _ = write_manifest(m, d)
    >>> load_manifest(d) == m
    True
    """
    path = manifest_path(path)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: manifest not found (expected the output of bin/convert.py)")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None

    def field(name: str, kind: type) -> Any:
        value = content.get(name) if isinstance(content, dict) else None
        if not isinstance(value, kind):
            raise DataError(f"{path}: field '{name}' must be a {kind.__name__}, got {value!r:.80}")
        return value

    if field("format", str) != FORMAT:
        raise DataError(f"{path}: field 'format' must be {FORMAT!r}, got {content['format']!r}")
    try:
        shards = tuple(
            ShardInfo(str(s["file"]), int(s["num_records"]), int(s["num_bytes"]))
            for s in field("shards", list)
        )
        rejected = tuple(
            Rejection(str(r["path"]), str(r["label"]), str(r["reason"]))
            for r in field("rejected", list)
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed entry in 'shards' or 'rejected' ({error!r})") from None
    manifest = Manifest(
        split=field("split", str),
        class_names=tuple(field("class_names", list)),
        shards=shards,
        counts_per_class={str(k): int(v) for k, v in field("counts_per_class", dict).items()},
        rejected=rejected,
        num_listed=field("num_listed", int),
        options=content.get("options", {}),
    )
    if manifest.num_listed != manifest.num_accepted + manifest.num_rejected:
        raise DataError(
            f"{path}: num_listed={manifest.num_listed} but the shards hold "
            f"{manifest.num_accepted} records and {manifest.num_rejected} videos were rejected"
        )
    return manifest
