"""Several processes (hosts) fitting one batch: JAX's multi-process runtime.

A batch, a bootstrap or a power study splits its replicates over a 1-D mesh of devices
(``jax.shard_map``, see :mod:`jaxlmm.batch`).  After ``jax.distributed.initialize()`` in every
process, ``jax.devices()`` lists the devices of all processes and the same mesh spans hosts.
Every process runs the same Python program on the same data (JAX's multi-controller model):
each computes the same inputs, places on its own devices the slice of the replicate axis that
the mesh gives them (:func:`to_mesh`), fits it, and the per-replicate results are gathered to
every process (:func:`gather`), so every process ends with the whole result.  A replicate's
arithmetic does not depend on which device or process fits it (blocks of fixed size), so the
result is bit-identical to one process.

:func:`initialize_distributed` wraps ``jax.distributed.initialize`` (which finds the coordinator, the
number of processes and this process's rank itself under Slurm and other cluster managers, or
takes them as arguments) and, on CPU, chooses gloo for the cross-process collectives.  It must
run before anything else touches JAX's devices.
"""

from __future__ import annotations

import numpy as np

from .errors import ArgumentError

__all__ = ["initialize_distributed", "is_multiprocess", "to_mesh", "gather"]


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids=None) -> None:
    """Join JAX's multi-process runtime (``jax.distributed.initialize`` with these arguments;
    None: found from the cluster's environment, e.g. Slurm's).  Call it first, in every process."""
    import jax

    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ArgumentError(f"{name} must be a non-negative integer, got {v!r}.")
    try:  # CPU processes exchange results through gloo (the default has no cross-process collectives)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # pragma: no cover - a JAX without the option
        pass
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)


def is_multiprocess(mesh) -> bool:
    """The mesh has devices of other processes."""
    import jax

    return mesh is not None and jax.process_count() > 1


def to_mesh(tree, mesh, sharded: bool):
    """Host or device arrays, equal on every process, as global arrays on ``mesh``: split along
    their first axis over the mesh (``sharded``) or replicated; each process places only the
    parts that its own devices hold.  In one process: the arrays as they are (``jnp.asarray``;
    ``jit`` and ``shard_map`` place them)."""
    import jax
    import jax.numpy as jnp

    if not is_multiprocess(mesh):
        return jax.tree.map(jnp.asarray, tree)
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Pspec

    sharding = NamedSharding(mesh, Pspec("replicate") if sharded else Pspec())

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, tree)


def gather(tree, mesh):
    """Global arrays split over the processes of ``mesh`` -> the whole arrays as numpy, on
    every process (in one process: ``jax.device_get``)."""
    import jax

    if not is_multiprocess(mesh):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
