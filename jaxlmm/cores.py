"""One JAX CPU device per core, so that batches, bootstraps and power studies use every core.

XLA runs a compiled program on one CPU device, and the while loops of a batched fit (BFGS
under ``vmap``) are sequential: on one device a bootstrap uses one core, whatever the machine.
Batches shard their replicate axis over ``jax.devices()`` (``jaxlmm.batch``), so with one CPU
device per core they use them all (measured on 2 cores: fev UN bootstrap 3,660 -> 6,450 fits/s).
A replicate's result is bit-identical whatever the number of devices (fixed blocks of
replicates, ``jaxlmm.batch.BLOCK``); single fits run on the first device as before.

At import jaxlmm asks JAX for one CPU device per usable core (``os.sched_getaffinity``), at
most :data:`MAX_DEVICES`, unless

* ``JAXLMM_CPU_DEVICES`` is set: a number of devices (``1`` gives JAX's default), or ``0`` /
  ``off`` to leave JAX's setting alone;
* the user chose a count for JAX (``JAX_NUM_CPU_DEVICES``, ``jax_num_cpu_devices``, or
  ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``);
* JAX has already started its backends (the count is fixed then; set
  ``jax.config.update("jax_num_cpu_devices", n)`` right after ``import jax`` instead).

Like :mod:`jaxlmm.cache`, this module does not import JAX: before JAX is imported it adds
``--xla_force_host_platform_device_count`` to ``XLA_FLAGS`` (a child process inherits it, and
one given its own ``XLA_FLAGS`` keeps its own count); after, it sets ``jax.config``.
"""

from __future__ import annotations

import os
import sys

from .errors import ArgumentError

__all__ = ["configure", "default_count", "MAX_DEVICES"]

#: devices asked for at most (each device fits at least two blocks of a chunk, so a chunk has
#: at least ``2 * BLOCK * devices`` replicates; more devices than this pad small batches a lot)
MAX_DEVICES = 16
_OFF = ("0", "off", "false", "no")


def default_count() -> int:
    """The usable cores of this process, at most :data:`MAX_DEVICES`."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_DEVICES))


def _wanted() -> int | None:
    raw = os.environ.get("JAXLMM_CPU_DEVICES")
    if raw is None:
        return default_count()
    raw = raw.strip().lower()
    if raw in _OFF:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ArgumentError(f"JAXLMM_CPU_DEVICES must be a positive number of CPU devices, or 0/off to leave JAX's "
                            f"setting alone; got {raw!r}.")
    return n


def configure() -> None:
    """Ask JAX for :func:`default_count` CPU devices unless told otherwise (module docstring)."""
    n = _wanted()
    if n is None or os.environ.get("JAX_NUM_CPU_DEVICES"):
        return
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    jax = sys.modules.get("jax")
    if jax is None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        return
    if jax.config.jax_num_cpu_devices != -1:  # chosen by the user
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already started: the count is fixed (module docstring)
        pass
