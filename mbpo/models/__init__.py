"""Learned dynamics models behind the one :class:`mbpo.dynamics.Dynamics` interface."""

from mbpo.models.ensemble import (
    ElitesMean,
    EnsembleDynamics,
    EnsembleParams,
    FixedMember,
    GaussianEnsemble,
    MemberChoice,
    ModelState,
    Normalizer,
    RandomElite,
    TrainConfig,
    TrainMetrics,
    fit,
    fit_normalizer,
    from_ensemble,
    select_elites,
)

__all__ = [
    "ElitesMean",
    "EnsembleDynamics",
    "EnsembleParams",
    "FixedMember",
    "GaussianEnsemble",
    "MemberChoice",
    "ModelState",
    "Normalizer",
    "RandomElite",
    "TrainConfig",
    "TrainMetrics",
    "fit",
    "fit_normalizer",
    "from_ensemble",
    "select_elites",
]
