"""Starting TensorFlow without its start-up noise, in a command and in its worker processes.

TensorFlow 2.21's C++ start-up writes straight to file descriptor 2, before any Python logging
exists and whatever `TF_CPP_MIN_LOG_LEVEL` says: "All log messages before absl::InitializeLog()",
oneDNN and CUDA-stub notices, and on a machine without a GPU `E0000 ... failed call to cuInit`,
which reads like a failure. `import_tensorflow` imports TensorFlow and initialises its devices
with descriptor 2 pointed at /dev/null, so the first line a user sees is ours; `verbose=True`
(the commands' `--verbose`) keeps everything. Free of TensorFlow itself.

`onednn_enabled` tells whether TensorFlow runs oneDNN's CPU kernels. repflow_tf leaves that to
TensorFlow (`TF_ENABLE_ONEDNN_OPTS`; on by itself only on CPUs with AVX-512 VNNI / AMX): on this
project's AVX2 CPU, TF 2.21's oneDNN makes the 2D ResNet train step 1.4-2.5x faster but computes
the filter gradient of a 1x1 stride-2 convolution on 3-4 channels 30-90% wrong and can corrupt
the heap (`bin/benchmark_layer.py --cases=onednn` measures both).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_started = False
_verbose = False
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Points file descriptor 2 at /dev/null inside the block (Python's `sys.stderr` too, as it
    writes there); restores it after, also on an exception."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs oneDNN's CPU kernels (imports TensorFlow; reads a
    private flag, False where that is gone).

    >>> onednn_enabled() in (True, False)
    True
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def import_tensorflow(verbose: bool = False) -> Any:
    """Imports TensorFlow and initialises its devices quietly (unless `verbose`); returns it.

    Also sets TensorFlow's later C++ logs to warnings and errors and its Python (absl) logs to
    warnings. A second call returns at once.

    >>> import_tensorflow().__name__
    'tensorflow'
    """
    global _started, _verbose
    _verbose = verbose
    if _started:
        return sys.modules["tensorflow"]
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = (
        "0" if verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    )
    with native_stderr_silenced(not verbose):
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA / cuInit notices come from here
    _started = True
    if not verbose:
        tf.get_logger().setLevel(logging.WARNING)
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    return tf


def quiet_worker_start(module: str, function: str, *args: Any) -> None:
    """A worker process's initializer: imports `module` (and so TensorFlow) quietly, then calls
    `module.function(*args)`. Pass it by reference (it lives in this TensorFlow-free module), e.g.
    `initializer=quiet_worker_start, initargs=("repflow_tf.data.convert", "_init_worker", ...)`.
    """
    with native_stderr_silenced(os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"):
        target = getattr(importlib.import_module(module), function)
        import_tensorflow()
    target(*args)


def quiet_process_pool(
    processes: int, module: str, function: str, *args: Any
) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of `processes` spawned workers, each started by `quiet_worker_start(module,
    function, *args)`. Spawn, never fork: a forked child of a process that already initialised
    TensorFlow hangs."""
    return concurrent.futures.ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=quiet_worker_start,
        initargs=(module, function, *args),
    )


def exit_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Starts a daemon thread that ends this worker process once its parent is gone (killed,
    even with SIGKILL): an orphan would go on with work nobody collects, then wait forever."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def is_verbose() -> bool:
    """Whether TensorFlow was started with `verbose=True` (the commands' `--verbose`): other
    native libraries' start-up lines (LiteRT's XNNPACK notice) are then kept too."""
    return _verbose
