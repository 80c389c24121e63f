#!/usr/bin/env bash
# The two agent CLIs that tests/test_agent_clis.py drives through ollamux, at pinned versions, from the
# npm registry only, into a cache prefix (~/.cache/ollamux/npm, or $OLLAMUX_NPM_PREFIX): Claude Code (its
# postinstall copies the native binary out of its npm platform package; it fetches nothing) and Codex
# (a node launcher plus its native binary in an npm platform package). A second run with the same pins
# installs nothing. The binaries end up in <prefix>/node_modules/.bin/{claude,codex}.
set -euo pipefail
CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
PREFIX=${OLLAMUX_NPM_PREFIX:-$HOME/.cache/ollamux/npm}
BIN=$PREFIX/node_modules/.bin

installed() { # package name -> its installed version, or nothing
  local pj=$PREFIX/node_modules/$1/package.json
  [ -f "$pj" ] && node -p "require(process.argv[1]).version" "$pj" 2>/dev/null || true
}

if [ "$(installed @anthropic-ai/claude-code)" = "$CLAUDE_CODE_VERSION" ] &&
  [ "$(installed @openai/codex)" = "$CODEX_VERSION" ] &&
  "$BIN/claude" --version >/dev/null 2>&1 && "$BIN/codex" --version >/dev/null 2>&1; then
  echo "npm tools: claude-code $CLAUDE_CODE_VERSION and codex $CODEX_VERSION already in $PREFIX"
  exit 0
fi
command -v npm >/dev/null || {
  echo "npm tools: npm is missing (install nodejs and npm)" >&2
  exit 1
}
echo "npm tools: installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION and @openai/codex@$CODEX_VERSION into $PREFIX"
mkdir -p "$PREFIX"
# Claude Code declares node >=22 but runs as a native binary; node only runs its small postinstall.
npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error --engine-strict=false \
  "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" >/dev/null
"$BIN/claude" --version >/dev/null
"$BIN/codex" --version >/dev/null
