"""Models ollamux runs itself: the built-in llama.cpp engine (GGUF files) or any server command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..state import AppState
    from .backend import ManagedBackend
    from .manager import ModelManager, ModelStatus, RunningModel

__all__ = ["ManagedBackend", "ModelManager", "ModelStatus", "RunningModel", "start_runtime"]


def __getattr__(name: str) -> Any:
    """The manager's names on first use: a model process (`python -m ollamux.runtime.engine`) imports this
    package before its own module and needs none of the manager (the server's side)."""
    if name == "ManagedBackend":
        from .backend import ManagedBackend

        return ManagedBackend
    if name in ("ModelManager", "ModelStatus", "RunningModel"):
        from . import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'ollamux.runtime' has no attribute {name!r}")


async def start_runtime(state: AppState, *, force: bool = False) -> ModelManager | None:
    """Build the manager of an app (None when nothing is managed, unless `force`: a model created from a
    GGUF blob needs one) and register its backends."""
    from .backend import ManagedBackend
    from .manager import ModelManager

    settings = state.settings
    if not force and settings.runtime.models_dir is None and not any(m.runtime for m in settings.models):
        return None
    manager = ModelManager(settings, state.client, state.registry, state.probed)

    def register() -> None:
        for name in manager.models:
            if name not in state.backends:
                state.backends[name] = ManagedBackend(name, manager)

    register()
    manager.on_new_models = register
    if state.metrics is not None:
        manager.on_loaded = state.metrics.observe_model_load  # ollamux_model_load_seconds
    await manager.rescan()  # the models folder, read in a worker thread, before the first request
    manager.background(manager.compute_config_digests())
    if settings.runtime.preload:
        manager.background(manager.preload(settings.runtime.preload))  # /health does not wait for it
    return manager
