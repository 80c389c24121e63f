"""Start-up checks of the managed runtime: a config that cannot run a model fails before serving."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..config import ConfigError, Settings

__all__ = ["check_runtime", "engine_available"]

INSTALL_HINT = "pip install 'ollamux[llama]'"


def engine_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def check_runtime(settings: Settings) -> None:
    """Raise ConfigError naming the key when a managed model cannot be run as configured."""
    for m in settings.models:
        spec = m.runtime
        if spec is None:
            continue
        key = f"models.{m.name}.runtime"
        if spec.gguf is not None:
            if not engine_available():
                raise ConfigError(
                    f"{key}.gguf",
                    f"the built-in llama.cpp engine (the xllamacpp package) is not installed: {INSTALL_HINT}",
                )
            if not spec.gguf.is_file():
                raise ConfigError(f"{key}.gguf", f"no such file: {spec.gguf}")
            if not _is_gguf(spec.gguf):  # else every start would fail, first said at the first request
                raise ConfigError(f"{key}.gguf", f"{spec.gguf} is not a GGUF file (it does not start with 'GGUF')")
        if spec.cmd is not None:
            exe = spec.cmd[0]
            found = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
            if found is None:
                raise ConfigError(f"{key}.cmd", f"'{exe}' is not an executable found on PATH")
    folder = settings.runtime.models_dir
    if folder is not None and folder.is_dir() and not engine_available() and _has_gguf(folder):
        raise ConfigError(
            "runtime.models_dir",
            f"{folder} holds GGUF files but the built-in llama.cpp engine (xllamacpp) is not installed: {INSTALL_HINT}",
        )


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return True  # unreadable now: the start says why, in its own words


def _has_gguf(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".gguf" for p in folder.iterdir())
    except OSError:
        return False
