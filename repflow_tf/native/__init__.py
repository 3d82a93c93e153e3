"""The flow iteration's fused CPU kernels, compiled for this machine on first use.

`tvl1_kernels.cc` holds Algorithm 1 and its hand-written reverse-mode gradient as two TensorFlow
CPU kernels (`RepflowTvl1`, `RepflowTvl1Grad`): each frame pair and block of channels runs all
its iterations on arrays that stay in the core's cache, which XLA's loops over whole
frame-batch tensors do not (see the README's layer section for the measured speed).
`repflow_tf.ops` uses them by default on a machine without a GPU, and falls back to its XLA
path where they cannot be built.

The first `library()` call compiles the source with the C++ compiler TensorFlow's headers need
(`$CXX`, else g++, c++ or clang++; about 20 s) into a cache directory (`$REPFLOW_TF_CACHE`, else
~/.cache/repflow_tf) under a key of the source, the compiler, TensorFlow's version and flags and
the CPU, so a change to any of them builds anew, and processes started together build it once
(a file lock). `REPFLOW_TF_NATIVE=0` turns the kernels off.

>>> available() in (True, False)
True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tensorflow as tf

SWITCH_VARIABLE = "REPFLOW_TF_NATIVE"
CACHE_VARIABLE = "REPFLOW_TF_CACHE"
SOURCE = Path(__file__).with_name("tvl1_kernels.cc")
# -march=native: the build is for this CPU (its key says which). -fno-math-errno and
# -fno-trapping-math let GCC vectorise the square roots and the thresholding's selects (the
# results are the same: nothing here reads errno or floating-point traps).
COMPILE_FLAGS = (
    "-shared",
    "-fPIC",
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=fast",
    "-w",
)
_COMPILERS = ("g++", "c++", "clang++")
_BUILD_SECONDS = 600


class NativeKernelsUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here; the message says why."""


def _compiler() -> str:
    chosen = os.environ.get("CXX")
    candidates = [chosen] if chosen else list(_COMPILERS)
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise NativeKernelsUnavailable(
        f"no C++ compiler found (looked for {', '.join(candidates)} on PATH; set CXX to one)"
    )


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    home = Path.home() / ".cache" / "repflow_tf"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"repflow_tf-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _build_command(compiler: str, output: Path) -> list[str]:
    return [
        compiler,
        *COMPILE_FLAGS,
        str(SOURCE),
        "-o",
        str(output),
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]


def _build_key(compiler: str) -> str:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    parts = [
        SOURCE.read_bytes().decode(),
        version,
        tf.__version__,
        " ".join(_build_command(compiler, Path("out"))),
        _cpu_identity(),
    ]
    return hashlib.sha256("\n\0".join(parts).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Holds an exclusive lock on `lock_path` (where the platform has file locks)."""
    try:
        import fcntl
    except ImportError:  # no file locks: the atomic rename below still keeps builds whole
        yield
        return
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(compiler: str, key: str) -> Path:
    """The compiled library for `key`, built now unless a build is cached."""
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NativeKernelsUnavailable(
            f"cannot create the build cache {directory}: {error}"
        ) from error
    library = directory / f"tvl1_kernels-{key}.so"
    log = directory / f"tvl1_kernels-{key}.log"
    with _exclusive(directory / f"tvl1_kernels-{key}.lock"):
        if library.exists():
            return library
        print(
            "repflow_tf: compiling the flow layer's CPU kernels for this machine "
            f"(once, about 20 s; cached in {directory})",
            file=sys.stderr,
            flush=True,
        )
        partial = directory / f".tvl1_kernels-{key}-{os.getpid()}.so"
        try:
            result = subprocess.run(
                _build_command(compiler, partial),
                capture_output=True,
                text=True,
                timeout=_BUILD_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NativeKernelsUnavailable(f"running {compiler} failed: {error}") from error
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            first = errors[0] if errors else f"exit status {result.returncode}"
            raise NativeKernelsUnavailable(f"compiling {SOURCE.name} failed: {first} (log: {log})")
        os.replace(partial, library)
    return library


@functools.cache
def _load_library(path: str):
    # Once per path: loading a library again returns a module without the ops it registered.
    return tf.load_op_library(path)


@functools.cache
def _load():
    """(the op library, None) or (None, why it is unavailable)."""
    if os.environ.get(SWITCH_VARIABLE, "1").strip() in ("0", "false", "False", "no", "off"):
        return None, f"turned off by {SWITCH_VARIABLE}={os.environ[SWITCH_VARIABLE]}"
    try:
        compiler = _compiler()
        path = _build(compiler, _build_key(compiler))
    except NativeKernelsUnavailable as error:
        return None, str(error)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"building the kernels failed: {error}"
    try:
        return _load_library(str(path)), None
    except (tf.errors.OpError, OSError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        return None, f"loading {path} failed ({first}); delete it to build it again"


def library():
    """The loaded op library (`repflow_tvl1`, `repflow_tvl1_grad`); builds it on first use.

    Raises NativeKernelsUnavailable, saying why, where it cannot be built or loaded.
    """
    loaded, reason = _load()
    if loaded is None:
        raise NativeKernelsUnavailable(f"the native flow kernels are unavailable: {reason}")
    return loaded


def available() -> bool:
    """Whether the kernels are (or can be) built and loaded here; builds them on first use."""
    return _load()[0] is not None


def unavailable_reason() -> str | None:
    """Why the kernels are unavailable, or None when they are available."""
    return _load()[1]
