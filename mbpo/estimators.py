"""Policy-gradient estimators as configurations of the one unroll engine
(:func:`mbpo.unroll.unroll`).

| estimator  | policy        | horizon n  | critic at the end  | gradient through the dynamics |
| ---------- | ------------- | ---------- | ------------------ | ----------------------------- |
| BPO        | deterministic | episode    | none               | pathwise                      |
| SVG(0)     | stochastic    | 0          | q(s_0, a_0)        | not used                      |
| SVG(n)     | stochastic    | n          | gamma^n q(s_n, a_n)| pathwise                      |
| SVG(inf)   | stochastic    | episode    | none               | pathwise                      |
| DPMB-R(n)  | deterministic | n          | gamma^n q(s_n, a_n)| pathwise                      |
| DPMB-SF(n) | deterministic | n          | gamma^n q(s_n, a_n)| score function of p(s'|s, a)  |

NFQCA/DPG is DPMB-R(0) (SVG(0) with a deterministic policy). The model-free score-function policy
gradient (REINFORCE with GAE) is :func:`reinforce_surrogate`, the zeroth-order reference.
References: Heess et al. 2015 (SVG); the reference text's "Policy Optimization with a Model".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.critics import lambda_returns
from mbpo.dynamics.base import Dynamics, State
from mbpo.noise_inference import infer_transition_noise
from mbpo.replay import Segment
from mbpo.types import Array, Float, Params, PRNGKey, Scalar
from mbpo.unroll import (
    DYNAMICS_GRADIENTS,
    PolicyFn,
    QFn,
    RolloutNoise,
    UnrollResult,
    sample_noise,
    unroll,
)

POLICY_KINDS = ("deterministic", "stochastic", "any")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One configuration of :func:`mbpo.unroll.unroll`.

    Attributes:
      name: label for logs and tables.
      horizon: n, the model steps before bootstrapping with the critic; None for the whole episode
        with no critic (BPO, SVG(inf)).
      dynamics_gradient: ``"pathwise"``, ``"stop"`` or ``"score"``.
      policy: the policy kind the estimator is defined for (``"any"`` accepts both).
    """

    name: str
    horizon: int | None
    dynamics_gradient: str = "pathwise"
    policy: str = "any"

    def __post_init__(self):
        if self.horizon is not None and (
            isinstance(self.horizon, bool)
            or not isinstance(self.horizon, (int, np.integer))
            or self.horizon < 0
        ):
            raise ValueError(
                f"horizon must be an int >= 0 or None (the whole episode), got {self.horizon!r}"
            )
        if self.dynamics_gradient not in DYNAMICS_GRADIENTS:
            raise ValueError(
                f"unknown dynamics_gradient {self.dynamics_gradient!r}; allowed: "
                f"{', '.join(DYNAMICS_GRADIENTS)}"
            )
        if self.policy not in POLICY_KINDS:
            raise ValueError(
                f"unknown policy kind {self.policy!r}; allowed: {', '.join(POLICY_KINDS)}"
            )
        if self.horizon is None and self.dynamics_gradient == "score":
            raise ValueError(
                f"{self.name}: a score-function estimator needs a critic, so a finite horizon; got "
                "horizon=None"
            )

    @property
    def bootstrap(self) -> bool:
        """Whether the surrogate ends with gamma^n q(s_n, a_n)."""
        return self.horizon is not None

    def num_steps(self, episode_length: int) -> int:
        """Model steps per unroll: n, or the whole episode."""
        return episode_length if self.horizon is None else self.horizon

    def check_policy(self, deterministic: bool) -> None:
        """Raises ValueError if the policy kind does not match this estimator."""
        kind = "deterministic" if deterministic else "stochastic"
        if self.policy not in ("any", kind):
            raise ValueError(f"{self.name} is defined for a {self.policy} policy, got a {kind} one")


def bpo(n: int | None = None) -> Estimator:
    """Backpropagation policy optimization: J = sum_t gamma^t r(s_t, d(s_t; w)), no critic.

    BPO has no horizon of its own: ``n`` (how many steps the trainer unrolls, None for the whole
    episode) does not change the estimator, whose surrogate never bootstraps."""
    return Estimator("bpo", None, "pathwise", "deterministic")


def svg(n: int | None) -> Estimator:
    """SVG(n) (n = 0: SVG(0), n = None: SVG(inf)) with a reparameterized stochastic policy."""
    return Estimator("svg(inf)" if n is None else f"svg({n})", n, "pathwise", "stochastic")


def dpmb_r(n: int) -> Estimator:
    """Deterministic policy, reparameterized model, n steps, critic bootstrap (n = 0: NFQCA/DPG)."""
    return Estimator(f"dpmb-r({n})", n, "pathwise", "deterministic")


def dpmb_sf(n: int) -> Estimator:
    """Deterministic policy, score function through log p(s'|s, d(s; w)), critic baseline."""
    return Estimator(f"dpmb-sf({n})", n, "score", "deterministic")


def critic_only(n: int) -> Estimator:
    """The n-step gradient with the dynamics treated as data (``stop``): only each step's direct
    dependence on its action, plus the critic at the end."""
    return Estimator(f"critic-only({n})", n, "stop", "any")


ESTIMATORS = {
    "bpo": bpo,
    "svg": svg,
    "dpmb_r": dpmb_r,
    "dpmb_sf": dpmb_sf,
    "critic_only": critic_only,
}


# The horizons each family takes: "finite" (it bootstraps with a critic: n >= 0), "positive"
# (BPO: the trainer unrolls n >= 1 steps, or the whole episode), "any" (n >= 0 or None).
HORIZONS = {
    "bpo": "positive",
    "svg": "any",
    "dpmb_r": "any",
    "dpmb_sf": "finite",
    "critic_only": "finite",
}


def check_horizon(name: str, horizon: int | None) -> None:
    """Raises ValueError, naming the value and what is allowed, for a horizon ``name`` refuses."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    kind = HORIZONS[name]
    if horizon is not None and (horizon < 0 or (horizon == 0 and kind == "positive")):
        raise ValueError(
            f"horizon must be >= 0 (>= 1 for bpo) or None (whole episodes), got {horizon}"
        )
    if horizon is None and kind == "finite":
        raise ValueError(f"{name} bootstraps with a critic: give a finite horizon, not None")


def make(name: str, horizon: int | None = None) -> Estimator:
    """``make("svg", 5)``, ``make("bpo")``, ... with a clear error for unknown names.

    BPO has no critic and no horizon of its own: the caller chooses how many steps it unrolls
    (the trainer's window), so ``horizon`` does not change it (:func:`bpo`)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](horizon)


def draw_noise(
    estimator: Estimator,
    dynamics: Dynamics,
    key: PRNGKey,
    eps_shape: tuple[int, ...],
    episode_length: int,
    batch: int,
) -> RolloutNoise:
    """A batch of explicit noise sequences with the lengths ``estimator`` needs."""
    n = estimator.num_steps(episode_length)
    return jax.vmap(
        lambda k: sample_noise(dynamics, k, n, eps_shape, extra_eps=int(estimator.bootstrap))
    )(jax.random.split(key, batch))


def surrogate(
    estimator: Estimator,
    dynamics: Dynamics,
    policy: PolicyFn,
    states: State,
    noise: RolloutNoise,
    *,
    gamma: float,
    q: QFn | None = None,
    baseline: QFn | None = None,
    weights: Float[Array, " B"] | None = None,
    contact: bool = False,
    remat: int | None = None,
) -> tuple[Scalar, UnrollResult]:
    """The batch mean of J_n over start states ``states`` (leading batch axis) and ``noise``,
    each weighted by ``weights`` (importance weights of off-policy data; their gradient is stopped).
    ``contact``: record each step's contact signal; ``remat``: rematerialize the rollout in chunks
    of that many steps (:func:`mbpo.unroll.rollout`).

    ``jax.grad`` of the first output w.r.t. the parameters ``policy`` closes over is the estimate.
    """
    if estimator.bootstrap and q is None:
        raise ValueError(f"{estimator.name} bootstraps with a critic: pass q")

    def one(state, noise_i):
        return unroll(
            dynamics,
            policy,
            state,
            noise_i,
            gamma=gamma,
            q=q if estimator.bootstrap else None,
            dynamics_gradient=estimator.dynamics_gradient,
            baseline=baseline,
            contact=contact,
            remat=remat,
        )

    values, results = jax.vmap(one)(states, noise)
    if weights is not None:
        values = jax.lax.stop_gradient(weights) * values
    return jnp.mean(values), results


def replay_surrogate(
    estimator: Estimator,
    dynamics: Dynamics,
    policy,
    params: Params,
    segments: Segment,
    key: PRNGKey,
    *,
    gamma: float,
    q: QFn,
    max_weight: float = 1.0,
) -> tuple[Scalar, dict]:
    """Off-policy SVG(n) from replayed real segments (SVG(1)-ER for n = 1; Heess et al. 2015).

    For each stored segment (s_0, a_0, s_1, ..., s_n) the noise that reproduces it is inferred at
    the current parameters w (reference text, "Noise Inference in SVG"):

        eps_t = noise_from_action(w, s_t, a_t),    xi_t = infer_noise(s_t, a_t, s_{t+1}),

    held fixed (gradient stopped), and the segment is re-simulated through ``dynamics`` (a learned
    model or the true differentiable dynamics) as a function of w from s_0, ending with
    gamma^n q(s_n, d(s_n, eps_n; w)) with a fresh eps_n. Each segment is weighted by the truncated
    importance weight min(max_weight, prod_t pi(a_t | s_t; w) / mu(a_t | s_t)). On data from the
    current policy the inferred noise is the noise that was drawn and the weights are 1, so the
    gradient is the on-policy SVG(n) gradient.

    Args:
      estimator: a bootstrapping estimator whose horizon n equals the segments' length.
      dynamics: the model the segments are re-simulated through (``has_noise_inference``).
      policy: a policy with ``sample``, ``log_prob`` and ``noise_from_action``
      (:mod:`mbpo.policies`,
        :class:`mbpo.flows.FlowPolicy`).
      params: w, the parameters differentiated.
      segments: a batch of :class:`mbpo.replay.Segment` (leading axes (B, n + 1) / (B, n)).
      key: draws eps_n.
      gamma: the discount.
      q: the critic q(s, a).
      max_weight: the truncation c of the importance weights.

    Returns:
      (the weighted mean of J_n, {"weight": mean weight, "eps": the inferred eps, "xi": the inferred
      xi}).
    """
    n = segments.action.shape[1]
    if not estimator.bootstrap or estimator.horizon != n:
        raise ValueError(
            f"{estimator.name} does not match segments of {n} steps: need a bootstrapping "
            f"estimator with horizon {n}"
        )
    first = jax.tree.map(lambda x: x[:, :-1], segments.state)
    after = jax.tree.map(lambda x: x[:, 1:], segments.state)
    inferred = jax.lax.stop_gradient(
        infer_transition_noise(policy, params, dynamics, first, segments.action, after)
    )
    eps_n = jax.random.normal(
        key, (segments.action.shape[0], 1, *policy.eps_shape), inferred.eps.dtype
    )
    noise = RolloutNoise(eps=jnp.concatenate([inferred.eps, eps_n], axis=1), xi=inferred.xi)
    log_pi = jax.vmap(jax.vmap(policy.log_prob, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(
        params, first.obs, segments.action
    )
    weights = jnp.minimum(max_weight, jnp.exp(jnp.sum(log_pi - segments.log_prob, axis=1)))
    start = jax.tree.map(lambda x: x[:, 0], segments.state)
    value, _ = surrogate(
        estimator,
        dynamics,
        lambda obs, eps: policy.sample(params, obs, eps),
        start,
        noise,
        gamma=gamma,
        q=q,
        weights=weights,
    )
    return value, {
        "weight": jnp.mean(jax.lax.stop_gradient(weights)),
        "eps": inferred.eps,
        "xi": inferred.xi,
    }


def score_surrogate(log_prob_t: Float[Array, " T"], advantage_t: Float[Array, " T"]) -> Scalar:
    """sum_t (log p_t - stop_gradient(log p_t)) * stop_gradient(A_t): value 0, gradient
    sum_t grad log p_t A_t (the likelihood-ratio estimator of the reference's "Derivative
    Estimation")."""
    return jnp.sum(
        (log_prob_t - jax.lax.stop_gradient(log_prob_t)) * jax.lax.stop_gradient(advantage_t)
    )


def gae(
    r_t: Float[Array, " T"],
    discount_t: Float[Array, " T"],
    v_t: Float[Array, " T"],
    v_tp1: Float[Array, " T"],
    lambda_: float,
) -> Float[Array, " T"]:
    """Generalized advantage estimates A_t = G^lambda_t - v(s_t) (Schulman et al. 2016), targets
    stopped."""
    return lambda_returns(r_t, discount_t, v_tp1, lambda_) - jax.lax.stop_gradient(v_t)


def reinforce_surrogate(
    log_pi_t: Float[Array, " T"],
    r_t: Float[Array, " T"],
    discount_t: Float[Array, " T"],
    v_t: Float[Array, " T"],
    v_tp1: Float[Array, " T"],
    lambda_: float,
) -> Scalar:
    """The model-free score-function policy gradient with a learned baseline and GAE(gamma, lambda):
    gradient sum_t grad_w log pi(a_t|s_t; w) A_t, actions and states as data."""
    return score_surrogate(log_pi_t, gae(r_t, discount_t, v_t, v_tp1, lambda_))
