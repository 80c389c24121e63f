#!/usr/bin/env bash
# The Debian packages the tests start as real servers or drive: Chromium (the dashboard's browser tests),
# PostgreSQL and Redis (the shared request log and shared limits of many instances), nginx (their load
# balancer in the scale-out tests). The .deb files are kept in ~/.cache/ollamux/apt, so a second machine
# with that cache downloads nothing; a package already installed is not asked for again.
set -euo pipefail
CACHE=${OLLAMUX_APT_CACHE:-$HOME/.cache/ollamux/apt}
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
for pkg in chromium postgresql redis-server nginx; do
  have "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "debian tools: chromium, postgresql, redis-server and nginx already installed"
  exit 0
fi
sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"
mkdir -p "$CACHE/partial"
echo "debian tools: installing ${need[*]} (apt, packages cached in $CACHE)"
$sudo_ apt-get update -qq
# no services are started by the packages' scripts: the tests start their own servers on loopback
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
  -o APT::Sandbox::User=root -o Dir::Cache::archives="$CACHE" "${need[@]}" >/dev/null
echo "debian tools: installed ${need[*]}"
