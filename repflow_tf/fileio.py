"""Durable, atomic file output: every file the project writes goes through here.

A reader (or a resumed run after a crash or a power cut) sees either the old file or the
complete new one, never a half-written one: the data goes to a temporary file next to the
target, is flushed to disk (fsync), renamed over the target, and the directory entry is flushed
too. Local paths use `os`; other filesystems (`gs://...`) go through `tf.io.gfile`, whose rename
is as atomic as that filesystem's (TensorFlow is imported only for those).

>>> import tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "numbers.json")
>>> write_json_atomic(path, [1, 2])
>>> open(path).read()
'[\\n 1,\\n 2\\n]\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any


def is_local(path: str) -> bool:
    """Whether `path` is on the local filesystem (not `scheme://...`)."""
    return "://" not in path


def _temporary_name(path: str) -> str:
    """A name next to `path`, unique to this process, with the same extension."""
    root, extension = os.path.splitext(path)
    return f"{root}.tmp-{os.getpid()}{extension}"


def fsync_directory(directory: str) -> None:
    """Flushes `directory`'s entries (a rename into it) to disk; a no-op where unsupported."""
    try:
        descriptor = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # e.g. filesystems that refuse fsync on directories
    finally:
        os.close(descriptor)


def commit_file(temporary: str, path: str) -> None:
    """Moves the finished `temporary` over `path`: fsync, rename, fsync of the directory."""
    if not is_local(path):
        import tensorflow as tf

        tf.io.gfile.rename(temporary, path, overwrite=True)
        return
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path to write `path`'s new content to (by any writer: Keras, a
    TFRecordWriter, ...); on success it replaces `path` (`commit_file`), on an error it is
    removed and `path` is left as it was.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.txt")
    >>> with atomic_output(path) as temporary:
    ...     _ = open(temporary, "w").write("weights")
    >>> open(path).read()
    'weights'
    """
    temporary = _temporary_name(path)
    try:
        yield temporary
        commit_file(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_atomic(path: str, content: str | bytes) -> None:
    """Writes `content` (text as UTF-8) to `path` atomically and durably."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_output(path) as temporary:
        if is_local(path):
            with open(temporary, "wb") as file:
                file.write(data)
        else:
            import tensorflow as tf

            with tf.io.gfile.GFile(temporary, "wb") as file:
                file.write(data)


def write_json_atomic(path: str, content: Any, indent: int = 1) -> None:
    """Writes `content` as JSON (plus a final newline) to `path` atomically and durably."""
    write_atomic(path, json.dumps(content, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yields a temporary path next to the directory `path` to build its new content in; on
    success it replaces `path` (`replace_directory`), on an error it is removed and `path` is
    left as it was (local filesystems only).

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "export")
    >>> with atomic_directory(path) as temporary:
    ...     os.makedirs(temporary)
    ...     _ = open(os.path.join(temporary, "saved_model.pb"), "w").write("graph")
    >>> os.listdir(path)
    ['saved_model.pb']
    """
    path = os.path.normpath(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    _remove(temporary)  # left by an earlier, killed run of this process id
    try:
        yield temporary
        replace_directory(temporary, path)
    finally:
        _remove(temporary)  # nothing left after a success


def replace_directory(temporary: str, directory: str) -> None:
    """Moves the finished directory `temporary` to `directory`, replacing any old one.

    The old directory is renamed aside first and deleted last, so at every moment `directory` is
    either the complete old or the complete new one (local filesystems only).
    """
    parent = os.path.dirname(os.path.normpath(directory))
    if os.path.isdir(directory):
        old = f"{os.path.normpath(directory)}.old-{os.getpid()}"
        os.replace(directory, old)
        os.replace(temporary, directory)
        fsync_directory(parent)
        shutil.rmtree(old)
    else:
        os.replace(temporary, directory)
        fsync_directory(parent)


def _remove(path: str) -> None:
    try:
        if is_local(path):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        else:
            import tensorflow as tf

            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
    except OSError:
        pass
