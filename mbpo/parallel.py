"""Data parallelism over devices: a mesh over the environment batch, parameters replicated.

The update functions are written for one device; placing a train state with these shardings
lets ``jax.jit`` partition them (GSPMD): each device steps its slice of the environments, and the
batch means in the objectives become all-reduces, so gradients are averaged across devices. The
same code spans hosts once ``jax.distributed.initialize()`` has run on each (``jax.devices()`` is
then every host's devices).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "envs"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"envs"`` over ``devices`` (default: all of them)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def shard_batch(tree, mesh: Mesh):
    """Places every leaf of ``tree`` split along its leading (environment) axis."""
    size = mesh.devices.size

    def put(x):
        if x.shape[0] % size:
            raise ValueError(
                f"the environment batch ({x.shape[0]}) must divide evenly over {size} devices"
            )
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(AXIS)))

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Places every leaf of ``tree`` whole on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_train_state(state, mesh: Mesh):
    """The trainer state with its environment states split over ``mesh`` and the rest replicated."""
    return replicate(state, mesh).replace(env_states=shard_batch(state.env_states, mesh))
