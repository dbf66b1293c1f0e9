"""A learned probabilistic ensemble dynamics model (PETS, Chua et al. 2018; MBPO, Janner et al.
2019).

Each of K members is a Gaussian MLP of the normalized input z = (u - m) / v, u = (s, a),

    s' - s ~ N(mu_k(s, a), diag sigma_k^2(s, a)),    k = 1..K,

optionally with a last output coordinate for the reward. The raw log-variance of the network is
squashed between learned limits with soft bounds (PETS, appendix A.1),

    log sigma^2 = max_lv - softplus(max_lv - raw),    log sigma^2 = min_lv + softplus(log sigma^2 -
    min_lv),

and the members are trained on bootstrap resamples of the data with the Gaussian negative
log-likelihood plus ``logvar_limit_coef * (sum max_lv - sum min_lv)``, which keeps the limits tight.
Training stops early on a holdout split, keeps each member's best parameters, and ranks the members
by holdout MSE to pick the elites (MBPO).

:class:`EnsembleDynamics` puts the trained model behind :class:`mbpo.dynamics.Dynamics`: the state
is
the observation vector and one transition is

    s' = s + mu_k(s, a) + sigma_k(s, a) * xi,    xi ~ N(0, I),

with the member k chosen by a :data:`MemberChoice` (a fixed member, the moment-matched mixture of
the elites, or an elite drawn at every step from an extra noise coordinate). Every choice keeps the
trajectory a pure function of the explicit noise, so the unroll engine runs on it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.scipy.special import logsumexp, ndtr, ndtri

from mbpo.cli import check_int, check_sizes
from mbpo.distributions import diagonal_normal_log_prob
from mbpo.dynamics.base import Dynamics
from mbpo.dynamics.function import _broadcast_bounds
from mbpo.networks import MLP, check_activation
from mbpo.optim import gradient_step
from mbpo.types import Action, Array, Done, Float, Int, Observation, Params, PRNGKey, Scalar

RewardFn = Callable[[Observation, Action, Observation], Scalar]
DoneFn = Callable[[Observation], Done]


class EnsembleParams(NamedTuple):
    """The trainable parameters; every leaf has a leading member axis of length K.

    Attributes:
      net: the K members' MLP parameters (flax), vmapped.
      max_logvar: the upper soft limit of log sigma^2, shape (K, out).
      min_logvar: the lower soft limit of log sigma^2, shape (K, out).
    """

    net: Params
    max_logvar: Float[Array, "K out"]
    min_logvar: Float[Array, "K out"]


class Normalizer(NamedTuple):
    """z = (u - mean) / std for the network input u = (s, a), fitted on the training data."""

    mean: Float[Array, " inp"]
    std: Float[Array, " inp"]


class ModelState(NamedTuple):
    """A trained ensemble: what :class:`EnsembleDynamics` holds as pytree leaves.

    Attributes:
      params: the members' parameters.
      normalizer: the input statistics the params were trained with.
      elites: indices of the ``num_elites`` members with the lowest holdout MSE, best first.
    """

    params: EnsembleParams
    normalizer: Normalizer
    elites: Int[Array, " E"]


def fit_normalizer(inputs: Float[Array, "N inp"]) -> Normalizer:
    """Mean and standard deviation of each input coordinate; a constant coordinate gets std 1."""
    std = jnp.std(inputs, axis=0)
    return Normalizer(mean=jnp.mean(inputs, axis=0), std=jnp.where(std > 1e-6, std, 1.0))


def select_elites(holdout_mse: Float[Array, " K"], num_elites: int) -> Int[Array, " E"]:
    """Indices of the ``num_elites`` members with the lowest holdout MSE, lowest first."""
    return jnp.argsort(holdout_mse)[:num_elites].astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianEnsemble:
    """K Gaussian MLPs of delta targets y = (s' - s[, r]); pure ``init``/``predict``/``loss``.

    Attributes:
      observation_size: size of s, >= 1.
      action_size: size of a, >= 1.
      num_members: K, the ensemble size (PETS and MBPO: 7 trained, 5 elites kept).
      num_elites: E <= K, how many members :func:`fit` keeps as elites.
      hidden: hidden layer sizes of each member (PETS, MBPO: four layers of 200).
      activation: a key of :data:`mbpo.networks.ACTIVATIONS` (PETS: swish).
      learn_reward: whether the last output coordinate models the reward r(s, a).
      logvar_limit_coef: weight of the penalty sum max_lv - sum min_lv (PETS: 0.01).
    """

    observation_size: int
    action_size: int
    num_members: int = 7
    num_elites: int = 5
    hidden: tuple[int, ...] = (200, 200, 200, 200)
    activation: str = "swish"
    learn_reward: bool = False
    logvar_limit_coef: float = 0.01

    def __post_init__(self) -> None:
        for name in ("observation_size", "action_size", "num_members", "num_elites"):
            check_int(name, getattr(self, name), 1)
        if self.num_elites > self.num_members:
            raise ValueError(
                f"num_elites must be <= num_members = {self.num_members}, got {self.num_elites}"
            )
        check_sizes(hidden=self.hidden)
        check_activation(self.activation)
        if not self.logvar_limit_coef >= 0.0:
            raise ValueError(f"logvar_limit_coef must be >= 0, got {self.logvar_limit_coef!r}")

    @classmethod
    def for_dynamics(cls, dynamics, **sizes) -> GaussianEnsemble:
        """An ensemble over ``dynamics``' observations and actions; ``sizes``: the other fields
        (``num_members``, ``num_elites``, ``hidden``, ...)."""
        return cls(
            observation_size=dynamics.observation_size, action_size=dynamics.action_size, **sizes
        )

    @property
    def output_size(self) -> int:
        """obs size, plus one for the reward when ``learn_reward``."""
        return self.observation_size + int(self.learn_reward)

    def _net(self) -> MLP:
        return MLP(self.hidden, 2 * self.output_size, self.activation)

    def init(self, key: PRNGKey) -> ModelState:
        """Fresh members, log-variance limits (0.5, -10) as in PETS, the identity normalizer."""
        size = self.observation_size + self.action_size
        net = jax.vmap(lambda k: self._net().init(k, jnp.zeros(size)))(
            jax.random.split(key, self.num_members)
        )
        # float32 whatever jax_enable_x64 says, like flax's parameters.
        shape, dtype = (self.num_members, self.output_size), jnp.float32
        params = EnsembleParams(net, jnp.full(shape, 0.5, dtype), jnp.full(shape, -10.0, dtype))
        normalizer = Normalizer(jnp.zeros(size, dtype), jnp.ones(size, dtype))
        return ModelState(params, normalizer, jnp.arange(self.num_elites, dtype=jnp.int32))

    def member_moments(
        self, params: EnsembleParams, normalizer: Normalizer, obs: Observation, action: Action
    ) -> tuple[Float[Array, " out"], Float[Array, " out"]]:
        """(mu, log sigma^2) of one member: ``params`` without the member axis."""
        z = (jnp.concatenate([obs, action]) - normalizer.mean) / normalizer.std
        mean, raw = jnp.split(self._net().apply(params.net, z), 2)
        logvar = params.max_logvar - jax.nn.softplus(params.max_logvar - raw)
        logvar = params.min_logvar + jax.nn.softplus(logvar - params.min_logvar)
        return mean, logvar

    def moments(
        self, params: EnsembleParams, normalizer: Normalizer, obs: Observation, action: Action
    ) -> tuple[Float[Array, "K out"], Float[Array, "K out"]]:
        """(mu_k, log sigma_k^2) of every member in ``params`` (any leading member axis K)."""
        return jax.vmap(self.member_moments, in_axes=(0, None, None, None))(
            params, normalizer, obs, action
        )

    def predict(
        self, model: ModelState, obs: Observation, action: Action
    ) -> tuple[Float[Array, "K out"], Float[Array, "K out"]]:
        """(mu_k(s, a), sigma_k(s, a)) of all K members for y = (s' - s[, r]); vmap for batches."""
        mean, logvar = self.moments(model.params, model.normalizer, obs, action)
        return mean, jnp.exp(0.5 * logvar)

    def loss(
        self,
        params: EnsembleParams,
        normalizer: Normalizer,
        obs: Float[Array, "K B obs"],
        action: Float[Array, "K B act"],
        target: Float[Array, "K B out"],
    ) -> Scalar:
        """The PETS loss, summed over members, each on its own batch (leading axis K):

            sum_k [ mean_{b,d} ((y - mu_k)^2 / sigma_k^2 + log sigma_k^2)
                    + logvar_limit_coef * sum_d (max_lv_kd - min_lv_kd) ],

        i.e. twice the mean Gaussian negative log-likelihood up to a constant, plus the penalty on
        the log-variance limits. Summing over members keeps each member's gradient independent of K.
        """

        per_sample = jax.vmap(self.member_moments, in_axes=(None, None, 0, 0))
        mean, logvar = jax.vmap(per_sample, in_axes=(0, None, 0, 0))(
            params, normalizer, obs, action
        )
        nll = jnp.mean((target - mean) ** 2 * jnp.exp(-logvar) + logvar, axis=(1, 2))
        limits = jnp.sum(params.max_logvar) - jnp.sum(params.min_logvar)
        return jnp.sum(nll) + self.logvar_limit_coef * limits

    def mse(
        self,
        params: EnsembleParams,
        normalizer: Normalizer,
        obs: Float[Array, "B obs"],
        action: Float[Array, "B act"],
        target: Float[Array, "B out"],
    ) -> Float[Array, " K"]:
        """Each member's mean squared error of mu_k on one shared batch (the holdout MSE)."""
        mean, _ = jax.vmap(self.moments, in_axes=(None, None, 0, 0))(
            params, normalizer, obs, action
        )
        return jnp.mean((mean - target[:, None]) ** 2, axis=(0, 2))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How :func:`fit` trains an ensemble (defaults after MBPO's model training).

    Attributes:
      learning_rate: Adam's step size, > 0.
      batch_size: transitions per member per gradient step, >= 1 (capped at the training size).
      holdout_fraction: share of the data held out for early stopping and elites, in (0, 1).
      max_holdout: at most this many holdout transitions (MBPO: 5000), >= 1.
      max_epochs: at most this many passes over each member's bootstrap sample, >= 1.
      patience: stop after this many epochs in which no member improved, >= 1 (MBPO: 5).
      min_improvement: a member improves when its holdout MSE falls below
        (1 - min_improvement) times its best so far, in [0, 1) (MBPO: 0.01). With noisy data the
        holdout MSE is mostly the noise variance and stops improving by 1% long before the
        variance head has converged; 0 counts every improvement.
      bootstrap: resample the training split with replacement per member (False: every member
        sees the whole split, in its own order).
    """

    learning_rate: float = 1e-3
    batch_size: int = 256
    holdout_fraction: float = 0.2
    max_holdout: int = 5000
    max_epochs: int = 200
    patience: int = 5
    min_improvement: float = 0.01
    bootstrap: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_holdout", "max_epochs", "patience"):
            check_int(name, getattr(self, name), 1)
        if not self.learning_rate > 0.0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(f"min_improvement must be in [0, 1), got {self.min_improvement!r}")


class TrainMetrics(NamedTuple):
    """What :func:`fit` reports.

    Attributes:
      holdout_mse: each member's holdout MSE at its kept (best) parameters, shape (K,).
      holdout_mse_t: holdout MSE after every epoch, shape (max_epochs, K); NaN after the stop.
      train_loss_t: mean training loss of every epoch, shape (max_epochs,); NaN after the stop.
      num_epochs: how many epochs ran.
      holdout_index: rows of the data in the holdout split.
    """

    holdout_mse: Float[Array, " K"]
    holdout_mse_t: Float[Array, "epochs K"]
    train_loss_t: Float[Array, " epochs"]
    num_epochs: Int[Array, ""]
    holdout_index: Int[Array, " H"]


class _FitCarry(NamedTuple):
    params: EnsembleParams
    opt_state: optax.OptState
    best_params: EnsembleParams
    best_mse: Float[Array, " K"]
    epochs_since_improvement: Int[Array, ""]
    epoch: Int[Array, ""]
    key: PRNGKey
    holdout_mse_t: Float[Array, "epochs K"]
    train_loss_t: Float[Array, " epochs"]


def fit(
    ensemble: GaussianEnsemble,
    key: PRNGKey,
    obs: Float[Array, "N obs"],
    action: Float[Array, "N act"],
    next_obs: Float[Array, "N obs"],
    reward: Float[Array, " N"] | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    params: EnsembleParams | None = None,
) -> tuple[ModelState, TrainMetrics]:
    """Trains an ensemble on N transitions (s, a, r, s') and selects its elites.

    The data are split at random into a holdout set (``holdout_fraction``, at most ``max_holdout``)
    and a training set; the input normalizer is fitted on the training set; each member draws its
    bootstrap sample of the training set. An epoch is one ``lax.scan`` over minibatches of every
    member's shuffled sample; the epochs are a ``lax.while_loop`` that stops after ``patience``
    epochs without a member improving its holdout MSE by ``min_improvement``. Each member keeps the
    parameters of its best holdout MSE. The whole fit is one compiled program.

    Args:
      ensemble: the model configuration.
      key: randomness of the split, the bootstrap, the initialization and the minibatches.
      obs, action, next_obs: the transitions, shapes (N, obs), (N, act), (N, obs).
      reward: r of each transition, shape (N,); required when ``ensemble.learn_reward``.
      config: the training settings.
      params: the parameters to start from (MBPO keeps training one model as its data grow);
        None initializes fresh members from ``key``.

    Returns:
      (the trained :class:`ModelState`, :class:`TrainMetrics`).

    Raises:
      ValueError: naming the array whose shape does not fit, or a data set too small to split.
    """
    n = _check_data(ensemble, obs, action, next_obs, reward)
    num_holdout = min(int(n * config.holdout_fraction), config.max_holdout)
    if num_holdout < 1 or n - num_holdout < 1:
        raise ValueError(
            f"{n} transitions cannot be split by holdout_fraction={config.holdout_fraction} into a "
            "non-empty holdout and training set"
        )
    if params is not None:
        _check_params(ensemble, params, key)
    target = next_obs - obs
    if ensemble.learn_reward:
        target = jnp.concatenate([target, jnp.asarray(reward)[:, None]], axis=1)
    return _fit(
        ensemble, config, num_holdout, key, jnp.asarray(obs), jnp.asarray(action), target, params
    )


def _check_data(ensemble: GaussianEnsemble, obs, action, next_obs, reward) -> int:
    n = np.shape(obs)[0] if np.ndim(obs) == 2 else -1
    expected = {
        "obs": (obs, (n, ensemble.observation_size)),
        "action": (action, (n, ensemble.action_size)),
        "next_obs": (next_obs, (n, ensemble.observation_size)),
    }
    if ensemble.learn_reward:
        if reward is None:
            raise ValueError("reward is None, but the ensemble has learn_reward=True")
        expected["reward"] = (reward, (n,))
    for name, (value, shape) in expected.items():
        if np.shape(value) != shape:
            raise ValueError(f"{name} has shape {np.shape(value)}, expected {shape} (N, size)")
    return n


def _check_params(ensemble: GaussianEnsemble, params: EnsembleParams, key: PRNGKey) -> None:
    expected = jax.eval_shape(ensemble.init, key).params
    got = [np.shape(leaf) for leaf in jax.tree.leaves(params)]
    want = [leaf.shape for leaf in jax.tree.leaves(expected)]
    if jax.tree.structure(params) != jax.tree.structure(expected) or got != want:
        raise ValueError(f"params do not fit this ensemble: leaf shapes {got}, expected {want}")


def _split(
    key_split: PRNGKey, key_boot: PRNGKey, n: int, num_holdout: int, members: int, bootstrap: bool
):
    """(holdout rows, training rows, each member's training sample: a bootstrap resample of the
    training rows, or all of them)."""
    num_train = n - num_holdout
    order = jax.random.permutation(key_split, n)
    hold, train = order[:num_holdout], order[num_holdout:]
    if bootstrap:
        sample = jax.random.randint(key_boot, (members, num_train), 0, num_train)
    else:
        sample = jnp.broadcast_to(jnp.arange(num_train), (members, num_train))
    return hold, train, train[sample]


def _fit_start(params, opt_state, key: PRNGKey, members: int, max_epochs: int, dtype) -> _FitCarry:
    """The early-stopping loop's first carry: no epoch done, every member's best MSE infinite."""
    return _FitCarry(
        params=params,
        opt_state=opt_state,
        best_params=params,
        best_mse=jnp.full((members,), jnp.inf, dtype),
        epochs_since_improvement=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        key=key,
        holdout_mse_t=jnp.full((max_epochs, members), jnp.nan, dtype),
        train_loss_t=jnp.full((max_epochs,), jnp.nan, dtype),
    )


@jax.jit(static_argnums=(0, 1, 2))
def _fit(
    ensemble: GaussianEnsemble,
    config: TrainConfig,
    num_holdout: int,
    key: PRNGKey,
    obs: Float[Array, "N obs"],
    action: Float[Array, "N act"],
    target: Float[Array, "N out"],
    params: EnsembleParams | None,
) -> tuple[ModelState, TrainMetrics]:
    n, k = obs.shape[0], ensemble.num_members
    num_train = n - num_holdout
    batch_size = min(config.batch_size, num_train)
    # The remainder of each shuffled sample is dropped; it is another one every epoch.
    num_batches = num_train // batch_size
    key_split, key_boot, key_init, key_loop = jax.random.split(key, 4)
    hold, train, sample = _split(key_split, key_boot, n, num_holdout, k, config.bootstrap)
    normalizer = fit_normalizer(jnp.concatenate([obs[train], action[train]], axis=1))
    if params is None:
        params = ensemble.init(key_init).params
    optimizer = optax.adam(config.learning_rate)

    def fit_step(carry, rows_kb):
        params, opt_state = carry
        step = gradient_step(
            ensemble.loss,
            params,
            opt_state,
            optimizer,
            normalizer,
            obs[rows_kb],
            action[rows_kb],
            target[rows_kb],
            skip_nonfinite=False,
        )
        return (step.params, step.opt_state), step.value

    def epoch(c: _FitCarry) -> _FitCarry:
        key, key_perm = jax.random.split(c.key)
        shuffled = jax.vmap(jax.random.permutation)(jax.random.split(key_perm, k), sample)
        batches = shuffled[:, : num_batches * batch_size].reshape(k, num_batches, batch_size)
        (params, opt_state), losses = jax.lax.scan(
            fit_step, (c.params, c.opt_state), batches.swapaxes(0, 1)
        )
        mse = ensemble.mse(params, normalizer, obs[hold], action[hold], target[hold])
        improved = mse < (1.0 - config.min_improvement) * c.best_mse
        best_params = jax.tree.map(
            lambda new, old: jnp.where(improved.reshape(-1, *(1,) * (new.ndim - 1)), new, old),
            params,
            c.best_params,
        )
        return _FitCarry(
            params=params,
            opt_state=opt_state,
            best_params=best_params,
            best_mse=jnp.where(improved, mse, c.best_mse),
            epochs_since_improvement=jnp.where(
                jnp.any(improved), 0, c.epochs_since_improvement + 1
            ),
            epoch=c.epoch + 1,
            key=key,
            holdout_mse_t=c.holdout_mse_t.at[c.epoch].set(mse),
            train_loss_t=c.train_loss_t.at[c.epoch].set(jnp.mean(losses)),
        )

    def running(c: _FitCarry) -> jax.Array:
        return (c.epoch < config.max_epochs) & (c.epochs_since_improvement < config.patience)

    start = _fit_start(params, optimizer.init(params), key_loop, k, config.max_epochs, target.dtype)
    end = jax.lax.while_loop(running, epoch, start)
    model = ModelState(
        end.best_params, normalizer, select_elites(end.best_mse, ensemble.num_elites)
    )
    metrics = TrainMetrics(end.best_mse, end.holdout_mse_t, end.train_loss_t, end.epoch, hold)
    return model, metrics


# --- member choice: which member (or mixture) makes a transition ----------------------------------
class FixedMember(struct.PyTreeNode):
    """Always member ``index`` (a pytree leaf: a jitted rollout does not retrace for another one).

    A member drawn once per rollout (PETS' TS-inf) is this choice with ``index`` drawn outside
    and the rollouts vmapped over the dynamics with their indices.
    """

    index: Int[Array, ""]


class ElitesMean(struct.PyTreeNode):
    """The elites' mixture replaced by the Gaussian of its first two moments (moment matching):

        mu = mean_e mu_e,    sigma^2 = mean_e (sigma_e^2 + (mu_e - mu)^2),

    so the spread of the elites' means (epistemic uncertainty) adds to the noise.
    """


class RandomElite(struct.PyTreeNode):
    """An elite drawn uniformly at every step (PETS' TS-1) by one extra noise coordinate:
    with xi = (xi_s, xi_e), xi_e ~ N(0, 1), the elite is elites[floor(E Phi(xi_e))], so the
    trajectory stays a pure function of the noise; ``noise_shape`` is (obs + 1,). No gradient
    flows through the choice (it is piecewise constant in xi_e). The transition density is the
    elites' mixture, mean_e N(s' - s; mu_e, sigma_e^2).
    """


MemberChoice = FixedMember | ElitesMean | RandomElite


class EnsembleDynamics(Dynamics):
    """A trained :class:`GaussianEnsemble` as :class:`~mbpo.dynamics.Dynamics`; build it with
    :func:`from_ensemble`. The state x is the observation s, and

        s' = s + mu(s, a) + sigma(s, a) * xi_s,

    with (mu, sigma) of the member or mixture chosen by ``member``. The reward is ``reward_fn(s, a,
    s')`` when given, else the chosen member's mean reward (``learn_reward``).

    ``infer_noise`` returns xi_s = (s' - s - mu) / sigma. Under :class:`RandomElite` the member
    of an observed transition is unknown: it returns the noise of the elite with the highest
    density at s', with xi_e at the centre of that elite's interval of Phi(xi_e), so that
    ``step(s, a, infer_noise(s, a, s')) == s'``; the rewards and ``reward`` use that elite too.
    """

    model: ModelState
    start_obs: Float[Array, "N obs"]
    member: MemberChoice
    ensemble: GaussianEnsemble = struct.field(pytree_node=False)
    reward_fn: RewardFn | None = struct.field(pytree_node=False)
    done_fn: DoneFn | None = struct.field(pytree_node=False)
    bounds: tuple[tuple[float, ...], tuple[float, ...]] = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="ensemble")

    @property
    def observation_size(self) -> int:
        return self.ensemble.observation_size

    @property
    def action_size(self) -> int:
        return self.ensemble.action_size

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.observation_size + isinstance(self.member, RandomElite),)

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.bounds[0]), np.asarray(self.bounds[1])

    def _moments(self, index: Int[Array, "*K"], obs: Observation, action: Action):
        """(mu, sigma^2) of member ``index`` (shapes (out,)) or members ``index`` ((K, out))."""
        params = jax.tree.map(lambda p: p[index], self.model.params)
        moments = self.ensemble.moments if jnp.ndim(index) else self.ensemble.member_moments
        mean, logvar = moments(params, self.model.normalizer, obs, action)
        return mean, jnp.exp(logvar)

    def _elite_moments(self, obs: Observation, action: Action):
        """Every elite's (mu_e, sigma_e^2), shapes (E, out)."""
        return self._moments(self.model.elites, obs, action)

    def _random_elite_position(self, xi_e: Scalar) -> Int[Array, ""]:
        num_elites = self.model.elites.shape[0]
        return jnp.clip(jnp.floor(num_elites * ndtr(xi_e)).astype(jnp.int32), 0, num_elites - 1)

    def _deterministic_moments(self, obs: Observation, action: Action):
        """(mu, sigma^2) for the choices that do not depend on the noise."""
        if isinstance(self.member, FixedMember):
            return self._moments(self.member.index, obs, action)
        mean_e, var_e = self._elite_moments(obs, action)
        mean = jnp.mean(mean_e, axis=0)
        return mean, jnp.mean(var_e + (mean_e - mean) ** 2, axis=0)

    def _explain(self, x: Observation, action: Action, x_next: Observation):
        """(mu, sigma^2, xi_e) of the transition's member: xi_e is None unless RandomElite."""
        if not isinstance(self.member, RandomElite):
            return (*self._deterministic_moments(x, action), None)
        mean_e, var_e = self._elite_moments(x, action)
        position = jnp.argmax(self._elite_log_densities(mean_e, var_e, x_next - x))
        num_elites = mean_e.shape[0]
        xi_e = ndtri((position + 0.5) / num_elites).astype(x.dtype)
        return mean_e[position], var_e[position], xi_e

    def _elite_log_densities(self, mean_e, var_e, delta) -> Float[Array, " E"]:
        n = self.observation_size
        return jax.vmap(diagonal_normal_log_prob, in_axes=(None, 0, 0))(
            delta, mean_e[:, :n], var_e[:, :n]
        )

    def _reset(self, key):
        index = jax.random.randint(key, (), 0, self.start_obs.shape[0])
        obs = self.start_obs[index]
        return obs, obs

    def _step(self, x, action, xi):
        n = self.observation_size
        if isinstance(self.member, RandomElite):
            elite = self.model.elites[self._random_elite_position(xi[n])]
            mean, var = self._moments(elite, x, action)
        else:
            mean, var = self._deterministic_moments(x, action)
        x_next = x + mean[:n] + jnp.sqrt(var[:n]) * xi[:n]
        reward = mean[n] if self.reward_fn is None else self.reward_fn(x, action, x_next)
        done = jnp.zeros((), x.dtype) if self.done_fn is None else self.done_fn(x_next)
        return x_next, x_next, reward, done

    def _log_prob(self, x, action, x_next):
        n = self.observation_size
        if isinstance(self.member, RandomElite):
            mean_e, var_e = self._elite_moments(x, action)
            log_p = self._elite_log_densities(mean_e, var_e, x_next - x)
            return logsumexp(log_p) - math.log(mean_e.shape[0])
        mean, var = self._deterministic_moments(x, action)
        return diagonal_normal_log_prob(x_next - x, mean[:n], var[:n])

    def _infer_noise(self, x, action, x_next):
        n = self.observation_size
        mean, var, xi_e = self._explain(x, action, x_next)
        xi = (x_next - x - mean[:n]) / jnp.sqrt(var[:n])
        return xi if xi_e is None else jnp.concatenate([xi, xi_e[None]])

    def _reward(self, x, action, x_next):
        if self.reward_fn is not None:
            return self.reward_fn(x, action, x_next)
        mean, _, _ = self._explain(x, action, x_next)
        return mean[self.observation_size]


def from_ensemble(
    ensemble: GaussianEnsemble,
    model: ModelState,
    *,
    start_obs: Float[Array, "N obs"],
    member: MemberChoice | None = None,
    reward: RewardFn | None = None,
    done: DoneFn | None = None,
    action_low: float | Array = -1.0,
    action_high: float | Array = 1.0,
    name: str = "ensemble",
) -> EnsembleDynamics:
    """Builds and validates an :class:`EnsembleDynamics`.

    Args:
      ensemble: the configuration ``model`` was trained with.
      model: the trained state (from :func:`fit`).
      start_obs: the bank of start observations; ``reset`` draws one uniformly.
      member: :class:`FixedMember`, :class:`ElitesMean` or :class:`RandomElite`; None gives
        :class:`RandomElite` (MBPO's model rollouts draw an elite per transition).
      reward: a known r(s, a, s') in observation space; None uses the learned reward head.
      done: s' -> {0., 1.}; never done by default.
      action_low, action_high: action bounds (scalars or vectors).
      name: a label for logs.

    Raises:
      ValueError: naming a bad ``start_obs`` shape, member index or a missing reward.
    """
    start_obs = jnp.asarray(start_obs)
    if (
        start_obs.ndim != 2
        or start_obs.shape[0] < 1
        or start_obs.shape[1] != ensemble.observation_size
    ):
        raise ValueError(
            f"start_obs has shape {start_obs.shape}, expected (N, {ensemble.observation_size}) "
            "with N >= 1"
        )
    if reward is None and not ensemble.learn_reward:
        raise ValueError("reward is None and the ensemble has learn_reward=False: no reward to use")
    member = RandomElite() if member is None else member
    if not isinstance(member, (FixedMember, ElitesMean, RandomElite)):
        raise TypeError(f"member must be FixedMember, ElitesMean or RandomElite, got {member!r}")
    if isinstance(member, FixedMember):
        index = member.index
        # A traced index (built inside jit or vmap) cannot be checked here.
        concrete = not isinstance(index, jax.core.Tracer)
        if concrete and (np.ndim(index) != 0 or not 0 <= int(index) < ensemble.num_members):
            raise ValueError(
                f"member index must be an int in [0, {ensemble.num_members}), got {index!r}"
            )
        member = FixedMember(jnp.asarray(index, jnp.int32))
    return EnsembleDynamics(
        model=model,
        start_obs=start_obs,
        member=member,
        ensemble=ensemble,
        reward_fn=reward,
        done_fn=done,
        bounds=_broadcast_bounds(action_low, action_high, ensemble.action_size),
        name=name,
    )
