"""What the benchmarks differentiate and compile: BPO's objective (the scaling and memory
benchmarks) and the SVG(n) update of a Brax task (the compile benchmarks)."""

from __future__ import annotations

import numpy as np


def bpo_objective(env: str, backend: str, T: int, batch: int, *, remat: int | None = None):
    """BPO's objective on ``env`` and what it is called with: J(w, states, noise), the mean over
    ``batch`` start states of sum_{t<T} 0.99^t r_t - 1e-3 |o_T|^2 with a Gaussian (64, 64) MLP
    policy (the terminal term makes J depend on the physics where the reward is constant, as
    inverted_pendulum's 1 per step: else XLA computes the return without simulating)
    (``remat``: :func:`mbpo.unroll.rollout`'s); the arguments (w, states, noise); the bytes of
    one env's state."""
    import jax
    import jax.numpy as jnp

    import envs
    from mbpo.policies import GaussianPolicy
    from mbpo.unroll import RolloutNoise, rollout

    kwargs = {"backend": backend} if envs.is_brax(env) else {}
    dynamics = envs.make(env, **kwargs)
    policy = GaussianPolicy.for_dynamics(dynamics, hidden=(64, 64), init_std=0.3)
    params = policy.init(jax.random.key(0))
    states = jax.vmap(dynamics.reset)(jax.random.split(jax.random.key(1), batch))
    k_eps, k_xi = jax.random.split(jax.random.key(2))
    noise = RolloutNoise(
        eps=jax.random.normal(k_eps, (batch, T, *policy.eps_shape)),
        xi=jax.vmap(lambda k: jax.vmap(dynamics.sample_noise)(jax.random.split(k, T)))(
            jax.random.split(k_xi, batch)
        ),
    )
    discount = 0.99 ** jnp.arange(T)

    def J(w, states, noise):
        def one(s, e):
            pol = lambda o, x: policy.sample(w, o, x)
            final, traj = rollout(dynamics, pol, s, e, remat=remat)
            return jnp.sum(discount * traj.reward) - 1e-3 * jnp.sum(final.obs**2)

        return jnp.mean(jax.vmap(one)(states, noise))

    state_bytes = sum(np.prod(x.shape[1:]) * x.dtype.itemsize for x in jax.tree.leaves(states))
    return J, (params, states, noise), int(state_bytes)


def svg_update_config(env: str, backend: str, horizon: int, num_envs: int, updates: int = 2):
    """The SVG(n) trainer config whose update the compile benchmarks compile: ``env`` on the
    ``backend`` pipeline, 1000-step episodes, gamma 0.99, 4 critic minibatches where they divide
    the window's transitions (else 1)."""
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    return UnrollTrainerConfig(
        env=env,
        brax_backend=backend,
        estimator="svg",
        horizon=horizon,
        num_envs=num_envs,
        episode_length=1000,
        gamma=0.99,
        num_updates=updates,
        critic_minibatches=1 if num_envs * horizon % 4 else 4,
    )
