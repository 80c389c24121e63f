"""What `ollamux serve` loads at start: the modules only some servers use are imported where they are used.

Each of these cost every server RSS it never used (issue #21, bench/README.md "Memory"); a top-level import
that brings one back fails here. Checked in a fresh interpreter, since this suite's own process has most of
them loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
