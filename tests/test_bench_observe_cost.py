"""bench/observe_cost.py runs: every case through every configuration, the writer child and the feeder thread
found and counted (a zero there would make the script's log figures silently wrong). No figure is judged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_observe_cost_reports_every_case_and_counts_the_writer() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = ["--requests", "20", "--rounds", "2", "--warmup", "5", "--only", "direct,off,log,metrics,both"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "observe_cost.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    cases = ("openai-json", "openai-sse", "ollama-json", "ollama-ndjson", "embeddings")
    assert [line.split(" | ")[0][2:] for line in table] == list(cases)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        # case, 5 totals, 3 costs, feeder (log / both), child (log / both)
        assert len(cells) == 11, line
        assert all(float(c) > 0 for c in cells[1:6])
        for pair in cells[9:11]:
            assert [float(v) > 0 for v in pair.split(" / ")] == [True, True], line
        assert all(re.fullmatch(r"[+-]\d+\.\d \([+-]\d+\.\d%\)", c) for c in cells[6:9]), line
