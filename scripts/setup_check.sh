#!/usr/bin/env bash
# Sourced by scripts/serve and scripts/test: `setup_missing` prints what a fresh clone still lacks (nothing
# once scripts/setup has run), so those two can run the set-up themselves before serving or testing.
setup_missing() {
  local models=${OLLAMUX_MODELS:-$HOME/.ollamux/models}
  if [ ! -x .venv/bin/ollamux ]; then
    echo "the virtualenv .venv with ollamux"
  elif ! .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("xllamacpp"))' 2>/dev/null; then
    echo "the llama.cpp engine (xllamacpp)"
  elif [ ! -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    echo "the model SmolLM2-135M-Instruct in $models"
  elif [ "${1:-}" = test ] && [ ! -x .venv/bin/pytest ]; then
    echo "the test tools (pytest, mypy, ruff)"
  elif [ "${1:-}" = test ] && [ ! -x "${OLLAMUX_NPM_PREFIX:-$HOME/.cache/ollamux/npm}/node_modules/.bin/claude" ]; then
    echo "the agent CLIs the tests drive (Claude Code, Codex)"
  fi
}
