"""JAX's persistent compilation cache, on by default for jaxlmm.

A fit compiles a few programs (the Newton loop with its Hessian, the tables); the second
process that fits a model of the same shapes loads them from disk instead of compiling.
The cache lives in ``$JAXLMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxlmm/xla``, else
``~/.cache/jaxlmm/xla``; ``JAXLMM_CACHE=0`` (set before the import) or
``jaxlmm.set_compilation_cache(False)`` turns it off, ``set_compilation_cache(path)`` moves it.
A cache directory chosen by the user for JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config``) is left alone.  Every program is cached (JAX's default keeps only those that
took more than a second to compile); with the ``filelock`` package installed JAX keeps it
under ``MAX_BYTES`` (evicting the least recently used), without it the directory grows and
may be deleted at any time.

Loading a cached program makes XLA log a C++ message per program on CPU: a warning, and on
machines with AVX-512 (where XLA records the LLVM tuning flags ``+prefer-no-gather`` and
``+prefer-no-scatter`` among the compile machine's features) an ERROR-level false alarm per
flag about a machine mismatch (jax-ml/jax#38445; the program loads and runs).  XLA reads its
log level once, when JAX is imported, so jaxlmm turns the cache on by itself only when it is
imported before JAX: it then sets ``TF_CPP_MIN_LOG_LEVEL=3`` (no C++ log lines; Python errors
are unchanged) unless the variable is already set.  Imported after JAX, jaxlmm leaves the cache
off; ``set_compilation_cache(True)`` turns it on (the messages then show).

This module does not import JAX at import time: :func:`configure` sets JAX's environment
variables when JAX is not loaded yet (it reads them at import), and ``jax.config`` otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .errors import ArgumentError

__all__ = ["configure", "set_compilation_cache", "default_cache_dir", "MAX_BYTES"]

MAX_BYTES = 2 * 1024**3
_OFF = ("0", "false", "no", "off")


def default_cache_dir() -> Path:
    """The cache directory jaxlmm uses unless told otherwise (module docstring)."""
    if os.environ.get("JAXLMM_CACHE_DIR"):
        return Path(os.environ["JAXLMM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "jaxlmm" / "xla"


def _settings(path: Path) -> dict:
    out = {"jax_compilation_cache_dir": str(path), "jax_persistent_cache_min_compile_time_secs": 0.0}
    if importlib.util.find_spec("filelock") is not None:  # JAX needs it to bound the cache's size
        out["jax_compilation_cache_max_size"] = MAX_BYTES
    return out


def _usable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        return os.access(path, os.W_OK)
    except OSError:
        return False


def configure() -> None:
    """Switch the cache on at import unless turned off, already chosen for JAX, or JAX is
    already imported (module docstring)."""
    if os.environ.get("JAXLMM_CACHE", "1").strip().lower() in _OFF:
        return
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    if "jax" in sys.modules:  # too late to quieten XLA's loader messages (module docstring)
        return
    path = default_cache_dir()
    if not _usable(path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for key, value in _settings(path).items():
        os.environ.setdefault(key.upper(), str(value))


def _reset() -> None:
    """Make JAX re-read the cache settings (it initialises its cache once, at the first compile)."""
    try:
        from jax._src import compilation_cache
    except ImportError:  # pragma: no cover - a JAX without it reads the settings at every compile
        return
    reset = getattr(compilation_cache, "reset_cache", None)
    if reset is not None:
        reset()


def set_compilation_cache(path: str | os.PathLike | bool | None = True) -> Path | None:
    """Turn JAX's persistent compilation cache on (``True``: the default directory; a path:
    that directory) or off (``False`` or ``None``).  Returns the directory in use, or None.

    >>> import jaxlmm as lmm
    >>> lmm.set_compilation_cache(False) is None
    True
    >>> lmm.set_compilation_cache(True) == lmm.default_cache_dir()
    True
    """
    import jax

    _reset()
    if path is None or path is False:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    if path is True:
        target = default_cache_dir()
    elif isinstance(path, (str, os.PathLike)):
        target = Path(path).expanduser()
    else:
        raise ArgumentError(
            f"set_compilation_cache takes a directory, True (the default directory) or False (off), not "
            f"{type(path).__name__}."
        )
    if not _usable(target):
        raise ArgumentError(f"The compilation cache directory {str(target)!r} cannot be created or written; pass "
                            "another directory, or False to turn the cache off.")
    for key, value in _settings(target).items():
        jax.config.update(key, value)
    return target
