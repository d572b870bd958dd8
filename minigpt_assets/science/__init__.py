"""Pure-Python science layer: sample mixtures, fit mixture models and scaling laws, score small-to-large decisions.

Nothing here imports dagster, torch or the rest of minigpt_assets; assets call into it.
"""

from __future__ import annotations

from .decisions import decision_accuracy, decision_accuracy_interval, rank_correlation
from .mixture_models import MixtureModel, fit_mixture_model
from .sampling import natural_prior, sample_mixture_array, sample_mixtures, sample_points
from .scaling import ScalingLaw, fit_scaling_law, flops, relative_errors
from .search import search_mixture

__all__ = [
    "MixtureModel",
    "ScalingLaw",
    "decision_accuracy",
    "decision_accuracy_interval",
    "fit_mixture_model",
    "fit_scaling_law",
    "flops",
    "natural_prior",
    "rank_correlation",
    "relative_errors",
    "sample_mixture_array",
    "sample_mixtures",
    "sample_points",
    "search_mixture",
]
