"""Optimizer pieces every trainer shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo.types import PyTree, Scalar


def nan_if_loss_nonfinite(loss: Scalar, grad: PyTree) -> PyTree:
    """``grad``, or NaN everywhere when ``loss`` is not finite.

    ``optax.apply_if_finite`` checks only the gradient; a NaN or Inf objective with a finite
    gradient (an Inf reward times a zero derivative, say) would be applied. Marking its gradient
    NaN makes ``apply_if_finite`` skip the step and count it in ``total_notfinite``.
    """
    finite = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grad)
