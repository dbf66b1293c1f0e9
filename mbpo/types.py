"""Array aliases used across mbpo, kept in one place (jaxtyping).

Axis names: ``obs`` observation size, ``act`` action size, ``T`` time, ``B`` batch.
"""

from typing import Any, TypeAlias

import jax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

PRNGKey: TypeAlias = PRNGKeyArray
Scalar: TypeAlias = Float[Array, ""]
Observation: TypeAlias = Float[Array, " obs"]
Action: TypeAlias = Float[Array, " act"]
Noise: TypeAlias = Float[Array, "..."]
Done: TypeAlias = Float[Array, ""]
Step: TypeAlias = Int[Array, ""]
Flag: TypeAlias = Bool[Array, ""]
# A pytree of arrays whose structure depends on the dynamics (an ODE state vector, a brax State,
# ...).
PyTree: TypeAlias = Any
Params: TypeAlias = jax.typing.ArrayLike | dict | tuple | list | None

__all__ = [
    "Action",
    "Array",
    "Done",
    "Flag",
    "Float",
    "Noise",
    "Observation",
    "PRNGKey",
    "Params",
    "PyTree",
    "Scalar",
    "Step",
]
