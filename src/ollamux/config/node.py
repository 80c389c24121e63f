"""`Node`: one mapping of the YAML tree with its dotted key path, `${VAR}` expansion and typed getters.

Every getter raises ConfigError naming the full key path, so the parsers never format paths themselves.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from .settings import ConfigError

__all__ = ["RUNTIME_VARS", "Node"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ${PORT}, ${CTX}, ${MODEL} and ${HOST} in a runtime command are filled by ollamux when it starts the process,
# so config loading must leave them in place rather than look them up in the environment.
RUNTIME_VARS = frozenset({"PORT", "CTX", "MODEL", "HOST"})
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B|)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1} | {
    f"{p}{i}b": (1024 if i else 1000) ** (n + 1) for n, p in enumerate("kmgt") for i in ("", "i")
}


class Node:
    """A mapping in the YAML tree that knows its dotted path, for error messages."""

    def __init__(self, path: str, value: Any, environ: Mapping[str, str]) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path or "(top level)", f"must be a mapping, not {type(value).__name__}")
        self.path = path
        self.data: dict[str, Any] = {str(k): v for k, v in value.items()}
        self.environ = environ

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def value(self, name: str) -> Any:
        return self.data.get(name)

    def only(self, allowed: set[str]) -> None:
        for k in self.data:
            if k not in allowed:
                import difflib  # only on this error path: the server never needs it

                # a typo's likely meaning first: the list of known keys can be long
                close = difflib.get_close_matches(str(k), sorted(allowed), n=1, cutoff=0.7)
                guess = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(self.key(k), f"unknown key ({guess}known here: {', '.join(sorted(allowed))})")

    def child(self, name: str) -> Node:
        return Node(self.key(name), self.data.get(name), self.environ)

    def items(self) -> list[tuple[str, Node]]:
        return [(k, Node(self.key(k), v, self.environ)) for k, v in self.data.items()]

    def expand(self, key: str, text: str, *, runtime_vars: bool = False) -> str:
        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if runtime_vars and var in RUNTIME_VARS:
                return m.group(0)
            if var not in self.environ:
                raise ConfigError(key, f"environment variable {var} is not set (used as ${{{var}}})")
            return self.environ[var]

        return _VAR.sub(sub, text)

    def opt_str(self, name: str) -> str | None:
        v = self.data.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ConfigError(self.key(name), f"must be a string, not {type(v).__name__}")
        return self.expand(self.key(name), str(v))

    def req_str(self, name: str) -> str:
        v = self.opt_str(name)
        if v is None or not v:
            raise ConfigError(self.key(name), "is required")
        return v

    def opt_bool(self, name: str, default: bool) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, str):
            v = self.expand(self.key(name), v).strip().lower()
            if v in ("true", "yes", "on", "1"):
                return True
            if v in ("false", "no", "off", "0"):
                return False
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"must be true or false, not {v!r}")
        return v

    def _number(self, name: str, kind: type, lo: float | None, hi: float | None) -> Any:
        v = self.data.get(name)
        if isinstance(v, str):
            v = self.expand(self.key(name), v)
            try:
                v = kind(v)
            except ValueError:
                raise ConfigError(self.key(name), f"must be a number, not {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not float(v).is_integer()):
            raise ConfigError(self.key(name), f"must be {'an integer' if kind is int else 'a number'}, not {v!r}")
        v = kind(v)
        if lo is not None and v < lo:
            raise ConfigError(self.key(name), f"must be at least {lo}, not {v}")
        if hi is not None and v > hi:
            raise ConfigError(self.key(name), f"must be at most {hi}, not {v}")
        return v

    def opt_int(self, name: str, default: Any, *, lo: int | None = None, hi: int | None = None) -> Any:
        if self.data.get(name) is None:
            return default
        return self._number(name, int, lo, hi)

    def opt_size(self, name: str, *, lo: int = 0) -> int:
        """A byte count: an integer, or a size string ("12GiB", "512 MiB", "8GB"; KiB/MiB/GiB/TiB are powers
        of 1024, KB/MB/GB/TB of 1000, B or none bytes)."""
        v = self.data.get(name)
        if isinstance(v, str):
            v = self.expand(self.key(name), v)
            m = _SIZE.fullmatch(v.strip())
            if m is None:
                raise ConfigError(self.key(name), f"must be a byte count or a size like 12GiB, not {v!r}")
            v = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(self.key(name), f"must be a byte count or a size like 12GiB, not {v!r}")
        size = int(v)
        if size < lo:
            raise ConfigError(self.key(name), f"must be at least {lo} bytes, not {size}")
        return size

    def opt_float(
        self, name: str, default: float | None, *, lo: float | None = None, nullable: bool = False
    ) -> float | None:
        if name not in self.data:
            return default
        if self.data[name] is None:
            if nullable:
                return None
            raise ConfigError(self.key(name), "must be a number")
        return float(self._number(name, float, lo, None))

    def str_list(self, name: str, *, runtime_vars: bool = False) -> tuple[str, ...]:
        v = self.data.get(name)
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise ConfigError(self.key(name), f"must be a list of strings, not {type(v).__name__}")
        out = []
        for i, item in enumerate(v):
            k = f"{self.key(name)}[{i}]"
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ConfigError(k, f"must be a string, not {type(item).__name__}")
            out.append(self.expand(k, str(item), runtime_vars=runtime_vars))
        return tuple(out)

    def str_map(self, name: str) -> dict[str, str]:
        v = self.data.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ConfigError(self.key(name), f"must be a mapping, not {type(v).__name__}")
        return {str(k): self.expand(f"{self.key(name)}.{k}", str(val)) for k, val in v.items()}

    def command(self, name: str) -> tuple[str, ...]:
        """A command line, given as a list of arguments or as one shell-quoted string.

        A string is split before `${VAR}` is expanded, so a value holding spaces stays one argument, as it does
        in the list form; both keep the runtime placeholders (RUNTIME_VARS) for the process start to fill.
        """
        v = self.data.get(name)
        if not isinstance(v, str):
            return self.str_list(name, runtime_vars=True)
        key = self.key(name)
        try:
            parts = shlex.split(v)
        except ValueError as exc:  # unbalanced quotes: shlex's own words say which
            raise ConfigError(key, f"is not a valid command line: {exc}") from None
        return tuple(self.expand(key, part, runtime_vars=True) for part in parts)
