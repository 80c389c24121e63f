"""What `ollamux serve` loads at start: the modules only some servers use are imported where they are used.

Each of these cost every server RSS it never used (issue #21, bench/README.md "Memory"); a top-level import
that brings one back fails here. Checked in a fresh interpreter, since this suite's own process has most of
them loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ollamux

# imported on first use: by `ollamux run`, a hub pull, a model process start, the Messages and Responses APIs
LAZY = (
    "rich",
    "filelock",
    "decimal",
    "ctypes",
    "ollamux.translate.anthropic",
    "ollamux.streams.pivot_to_anthropic",
    "ollamux.translate.responses",
    "ollamux.streams.pivot_to_responses",
)


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout))


def test_serve_imports_none_of_the_lazy_modules() -> None:
    loaded = _loaded_after("import ollamux.cli, ollamux.app")
    assert "ollamux.api.anthropic" in loaded  # the check sees the fronts' own modules
    assert "ollamux.cli.run" in loaded
    assert sorted(m for m in LAZY if m in loaded) == []


def test_the_terminal_and_the_process_start_load_theirs_when_used() -> None:
    # the Messages, Responses and pull paths are exercised end to end by their own suites
    loaded = _loaded_after(
        "import ollamux.cli\n"
        "from ollamux.cli.run import Terminal\n"
        "Terminal().spinner()\n"
        "from ollamux.runtime.process import _die_with_parent\n"
        "_die_with_parent(1)"
    )
    assert {"rich", "ctypes"} <= loaded


def test_a_model_process_loads_none_of_the_server() -> None:
    # `python -m ollamux.runtime.engine` (one per model ollamux runs) imports the package first: with the
    # server's stack (aiohttp's web server, every API) it held ~24 MB more RSS per model (bench/README.md)
    loaded = _loaded_after("import ollamux.runtime.engine")
    server = sorted(
        m for m in loaded if m.startswith(("aiohttp", "ollamux.app", "ollamux.api", "ollamux.runtime.manager"))
    )
    assert server == []


def test_every_package_imports_first() -> None:
    # an import circle hides while something else happens to be imported before it (the package used to
    # import the whole app at once): each package, imported first in a fresh interpreter, must load
    packages = sorted(
        "ollamux." + p.name
        for p in (Path(ollamux.__file__).parent).iterdir()
        if (p / "__init__.py").is_file() and p.name != "__pycache__"
    )
    code = (
        "import importlib, subprocess, sys\n"
        f"for name in {packages!r}:\n"
        "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True, text=True)\n"
        "    if r.returncode:\n"
        "        print(name, r.stderr.strip().splitlines()[-1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout == "", out.stdout
