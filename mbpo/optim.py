"""Optimizer pieces every trainer shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mbpo.types import PyTree, Scalar


def nan_if_loss_nonfinite(loss: Scalar, grad: PyTree) -> PyTree:
    """``grad``, or NaN everywhere when ``loss`` is not finite.

    ``optax.apply_if_finite`` checks only the gradient; a NaN or Inf objective with a finite
    gradient (an Inf reward times a zero derivative, say) would be applied. Marking its gradient
    NaN makes ``apply_if_finite`` skip the step and count it in ``total_notfinite``.
    """
    finite = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grad)


def guarded(base: optax.GradientTransformation, max_grad_norm: float) -> optax.GradientTransformation:
    """``base`` after global-norm clipping, inside ``optax.apply_if_finite``: a non-finite
    gradient never reaches the parameters; the step is skipped and counted (``total_notfinite``)."""
    return optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(max_grad_norm), base), max_consecutive_errors=1_000_000)
