"""mbpo.networks.MLP: its shapes, the linear map without hidden layers, and layer norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.networks import ACTIVATIONS, MLP, check_activation


def test_without_hidden_layers_and_biases_it_is_a_linear_map():
    net = MLP(hidden=(), out=2, use_bias=False)
    params = net.init(jax.random.key(0), jnp.zeros(3))
    [kernel] = jax.tree.leaves(params)
    x = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(net.apply(params, x), x @ kernel, rtol=1e-6)
    np.testing.assert_allclose(net.apply(params, 2 * x), 2 * net.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_gives_the_output_size_on_single_and_batched_inputs(activation):
    net = MLP(hidden=(8, 8), out=3, activation=activation)
    params = net.init(jax.random.key(0), jnp.zeros(5))
    assert net.apply(params, jnp.ones(5)).shape == (3,)
    assert net.apply(params, jnp.ones((4, 5))).shape == (4, 3)


def test_layer_norm_makes_the_output_invariant_to_the_scale_of_the_first_layer():
    net = MLP(hidden=(16,), out=1, layer_norm=True)
    params = net.init(jax.random.key(0), jnp.zeros(4))
    x = jnp.array([0.3, -1.0, 2.0, 0.1])
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, p: 7.0 * p if "Dense_0" in jax.tree_util.keystr(path) else p, params
    )
    np.testing.assert_allclose(net.apply(scaled, x), net.apply(params, x), rtol=1e-4)
    assert "LayerNorm_0" in params["params"]


def test_a_small_final_scale_starts_near_zero():
    x = jnp.ones(6)
    small = MLP(hidden=(32,), out=2, final_scale=1e-4)
    assert float(jnp.max(jnp.abs(small.apply(small.init(jax.random.key(0), x), x)))) < 0.05


def test_an_unknown_activation_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown activation 'sigmoidd'; allowed: relu, tanh"):
        check_activation("sigmoidd")
