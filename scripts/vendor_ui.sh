#!/usr/bin/env bash
# The dashboard's browser libraries, at pinned versions, from the npm registry into a cache prefix
# (~/.cache/ollamux/npm-ui, or $OLLAMUX_NPM_UI_PREFIX), then their built files copied into
# src/ollamux/ui/static/vendor/. The copies are committed: installing ollamux needs no npm and the page
# loads nothing from a CDN. Run this only to change a pin; it rewrites vendor/VERSIONS.md and the licenses.
set -euo pipefail
UPLOT_VERSION=1.6.32
ALPINE_VERSION=3.17.5
EVENTSOURCE_PARSER_VERSION=4.1.3
PREFIX=${OLLAMUX_NPM_UI_PREFIX:-$HOME/.cache/ollamux/npm-ui}
cd "$(dirname "$0")/.."
DEST=src/ollamux/ui/static/vendor
command -v npm >/dev/null || {
  echo "vendor_ui: npm is missing (install nodejs and npm)" >&2
  exit 1
}
mkdir -p "$PREFIX" "$DEST"
echo "vendor_ui: uplot@$UPLOT_VERSION alpinejs@$ALPINE_VERSION eventsource-parser@$EVENTSOURCE_PARSER_VERSION into $PREFIX"
npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error \
  "uplot@$UPLOT_VERSION" "alpinejs@$ALPINE_VERSION" "eventsource-parser@$EVENTSOURCE_PARSER_VERSION" >/dev/null
NM=$PREFIX/node_modules
version() { node -p "require(process.argv[1]).version" "$NM/$1/package.json"; }
for pkg_want in "uplot $UPLOT_VERSION" "alpinejs $ALPINE_VERSION" "eventsource-parser $EVENTSOURCE_PARSER_VERSION"; do
  set -- $pkg_want
  [ "$(version "$1")" = "$2" ] || { echo "vendor_ui: $1 is $(version "$1"), not $2" >&2; exit 1; }
done
rm -f "$DEST/eventsource-parser.js"
cp "$NM/uplot/dist/uPlot.iife.min.js" "$DEST/uPlot.iife.min.js"
cp "$NM/uplot/dist/uPlot.min.css" "$DEST/uPlot.min.css"
cp "$NM/uplot/LICENSE" "$DEST/LICENSE.uplot"
cp "$NM/alpinejs/dist/cdn.min.js" "$DEST/alpine.min.js"
# alpinejs's npm package ships no LICENSE file (its package.json says MIT): the MIT text of its repository
if [ -f "$NM/alpinejs/LICENSE.md" ]; then
  cp "$NM/alpinejs/LICENSE.md" "$DEST/LICENSE.alpinejs"
else
  cat >"$DEST/LICENSE.alpinejs" <<'MIT'
MIT License

Copyright © 2019-2021 Caleb Porzio and contributors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
MIT
fi
# an ES module in three files (index.js imports ./parse.js and ./errors.js): kept together, without maps
rm -rf "$DEST/eventsource-parser"
mkdir -p "$DEST/eventsource-parser"
for f in index.js parse.js errors.js; do
  sed '/^\/\/# sourceMappingURL=/d' "$NM/eventsource-parser/dist/$f" >"$DEST/eventsource-parser/$f"
done
cp "$NM/eventsource-parser/LICENSE" "$DEST/LICENSE.eventsource-parser"
license() { node -p "require(process.argv[1]).license" "$NM/$1/package.json"; }
cat >"$DEST/VERSIONS.md" <<NOTE
# Vendored browser libraries of the dashboard (/ui)

Copied from the npm registry's packages by \`scripts/vendor_ui.sh\` (pins at its top); do not edit by hand.

| file | npm package | version | license |
|---|---|---|---|
| uPlot.iife.min.js, uPlot.min.css | uplot (dist/) | $UPLOT_VERSION | $(license uplot), LICENSE.uplot |
| alpine.min.js | alpinejs (dist/cdn.min.js) | $ALPINE_VERSION | $(license alpinejs), LICENSE.alpinejs |
| eventsource-parser/{index,parse,errors}.js | eventsource-parser (dist/, an ES module) | $EVENTSOURCE_PARSER_VERSION | $(license eventsource-parser), LICENSE.eventsource-parser |
NOTE
ls -lR "$DEST"
