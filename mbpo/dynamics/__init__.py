"""One differentiable dynamics interface for Brax, ODEs, learned models and user functions."""

from mbpo.dynamics.base import Dynamics, NaNActionError, State, check_actions_finite, check_array
from mbpo.dynamics.brax_env import BACKENDS, BraxDynamics, from_brax
from mbpo.dynamics.function import FunctionDynamics, from_function, make_function_dynamics
from mbpo.dynamics.ode import ODESolver, from_ode

__all__ = [
    "BACKENDS",
    "BraxDynamics",
    "Dynamics",
    "FunctionDynamics",
    "NaNActionError",
    "ODESolver",
    "State",
    "check_actions_finite",
    "check_array",
    "from_brax",
    "from_function",
    "from_ode",
    "make_function_dynamics",
]
