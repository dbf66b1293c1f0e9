"""Optimizer pieces every trainer shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbpo.types import PyTree, Scalar


def nan_if_loss_nonfinite(loss: Scalar, grad: PyTree) -> PyTree:
    """``grad``, or NaN everywhere when ``loss`` is not finite.

    ``optax.apply_if_finite`` checks only the gradient; a NaN or Inf objective with a finite
    gradient (an Inf reward times a zero derivative, say) would be applied. Marking its gradient
    NaN makes ``apply_if_finite`` skip the step and count it in ``total_notfinite``.
    """
    finite = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grad)


def guarded(
    base: optax.GradientTransformation, max_grad_norm: float
) -> optax.GradientTransformation:
    """``base`` after global-norm clipping, inside ``optax.apply_if_finite``: a non-finite
    gradient never reaches the parameters; the step is skipped and counted (``total_notfinite``)."""
    return optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(max_grad_norm), base),
        max_consecutive_errors=1_000_000,
    )


def polyak(target: PyTree, online: PyTree, tau: float) -> PyTree:
    """theta_target <- (1 - tau) theta_target + tau theta (tau = 1 copies)."""
    return jax.tree.map(lambda t, o: (1 - tau) * t + tau * o, target, online)


class Step(NamedTuple):
    """What :func:`gradient_step` returns: the new parameters and optimizer state, the loss (or
    objective) value, the auxiliary output of the loss function, and the gradient's global norm."""

    params: PyTree
    opt_state: optax.OptState
    value: Scalar
    aux: Any
    grad_norm: Scalar


def gradient_step(
    loss: Callable[..., Any],
    params: PyTree,
    opt_state: optax.OptState,
    optimizer: optax.GradientTransformation,
    *args,
    maximize: bool = False,
    has_aux: bool = False,
    skip_nonfinite: bool = True,
) -> Step:
    """One optimizer step on ``loss(params, *args)``: descends it, or ascends it with ``maximize``
    (an objective J: the update is applied to -dJ/dw). A non-finite value marks the gradient NaN
    (:func:`nan_if_loss_nonfinite`), so a guarded optimizer (:func:`guarded`) skips and counts
    the step; ``grad_norm`` is the norm of the true gradient. ``skip_nonfinite=False`` leaves
    the gradient as it is (an unguarded optimizer, such as the ensemble's, would apply NaN either
    way, and the extra select changes XLA's fusion and so the last bits). The one place mbpo writes
    value_and_grad -> sign -> update -> apply (flax's ``TrainState.apply_gradients``, brax's
    ``gradient_update_fn``)."""
    out, grad = jax.value_and_grad(loss, has_aux=has_aux)(params, *args)
    value, aux = out if has_aux else (out, None)
    step_grad = nan_if_loss_nonfinite(value, grad) if skip_nonfinite else grad
    if maximize:
        step_grad = jax.tree.map(jnp.negative, step_grad)
    updates, opt_state = optimizer.update(step_grad, opt_state, params)
    return Step(optax.apply_updates(params, updates), opt_state, value, aux, optax.tree.norm(grad))


class TrainState(struct.PyTreeNode):
    """One trainable part of a learner: its parameters, optimizer state and (optionally) target
    parameters, with the optimizer held as static data (flax's ``TrainState``).

    Attributes:
      params: the parameters.
      opt_state: ``tx``'s state.
      target: slowly tracking target parameters (:meth:`track`), or None for parts without one.
      tx: the optimizer (static: not a leaf).
    """

    params: PyTree
    opt_state: optax.OptState
    target: PyTree | None
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls, params: PyTree, tx: optax.GradientTransformation, *, target: bool = False
    ) -> TrainState:
        """A fresh part; ``target=True`` starts its target parameters at ``params``."""
        return cls(
            params=params, opt_state=tx.init(params), target=params if target else None, tx=tx
        )

    def step(self, loss: Callable[..., Any], *args, **kwargs) -> tuple[TrainState, Step]:
        """:func:`gradient_step` of ``loss(params, *args)`` (same keywords); the new part and the
        step."""
        step = gradient_step(loss, self.params, self.opt_state, self.tx, *args, **kwargs)
        return self.replace(params=step.params, opt_state=step.opt_state), step

    def apply_gradients(self, grads: PyTree) -> TrainState:
        """One ``tx`` step along given gradients (for gradients written in closed form)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state)

    def track(self, tau: float) -> TrainState:
        """target <- (1 - tau) target + tau params (Polyak averaging; tau = 1 copies)."""
        return self.replace(target=polyak(self.target, self.params, tau))

    @property
    def skipped(self) -> jax.Array:
        """Steps a guarded optimizer (:func:`guarded`) skipped as non-finite."""
        return self.opt_state.total_notfinite


def temperature_step(temperature: TrainState, log_pi: Scalar, target_entropy: float) -> TrainState:
    """One step of the entropy temperature log alpha (SAC, SAPO): the gradient of
    -log_alpha (log pi + target entropy) is -(log pi + target), so alpha grows while the entropy
    -log pi is below the target. ``log_pi``'s gradient is stopped."""
    grad = -(jax.lax.stop_gradient(log_pi) + target_entropy).astype(temperature.params.dtype)
    return temperature.apply_gradients(grad)
