"""Small flax networks shared by policies, critics and learned models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "swish": nn.swish,
    "gelu": nn.gelu,
}


class MLP(nn.Module):
    """y = W_L h_{L-1} + b_L with h_k = act(W_k h_{k-1} + b_k); ``hidden=()`` is a linear map.

    Attributes:
      hidden: sizes of the hidden layers.
      out: size of the output.
      activation: a key of ``ACTIVATIONS``.
      use_bias: whether layers have biases (False gives the pure linear maps of LQR tests).
      final_scale: scale of the last layer's initialization (small values start policies near 0).
      layer_norm: a LayerNorm between each hidden layer and its activation (SAPO's networks,
        etaoxing/mineral: Linear -> LayerNorm -> SiLU).
    """

    hidden: Sequence[int]
    out: int
    activation: str = "tanh"
    use_bias: bool = True
    final_scale: float = 1.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for size in self.hidden:
            x = nn.Dense(size, use_bias=self.use_bias)(x)
            x = act(nn.LayerNorm()(x) if self.layer_norm else x)
        init = nn.initializers.variance_scaling(self.final_scale, "fan_avg", "uniform")
        return nn.Dense(self.out, use_bias=self.use_bias, kernel_init=init)(x)


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
