"""Which defaults and filters a route's requests get: its model's (config or create), and for a model
ollamux runs itself, Ollama's default sampling underneath (`translate.model_params.MANAGED_SAMPLING`)."""

from __future__ import annotations

from ..config import NO_PARAMS, ModelParams
from ..registry import Route
from ..state import AppState
from ..translate.model_params import MANAGED_SAMPLING, with_defaults_under

__all__ = ["params_for"]


def params_for(state: AppState, route: Route) -> ModelParams:
    settings = route.entry.settings
    params = settings.params if settings is not None else NO_PARAMS
    runtime = state.runtime
    if runtime is not None and runtime.manages(route.backend):
        return with_defaults_under(params, MANAGED_SAMPLING)
    return params
