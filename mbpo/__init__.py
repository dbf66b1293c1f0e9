"""mbpo: policy optimization through differentiable dynamics, in JAX."""

__version__ = "0.1.0"
