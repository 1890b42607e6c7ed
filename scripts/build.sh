#!/usr/bin/env bash
# Builds Caddy with this plugin through xcaddy, as the README's "Build with xcaddy" does:
#
#   scripts/build.sh [output]      # output defaults to ./caddy in the repository root
#
# CGO_ENABLED (default 0: a static binary), GOOS, GOARCH and GOARM are taken from the
# environment. The Dockerfile and .ci/run both use this script. What it prints is
# xcaddy's: its log, then the binary's path and `<output> version` (not run when
# built for another platform).
set -euo pipefail

# A relative output is relative to where the script was called from.
out=${1:-}
if [ -n "$out" ] && [ "${out#/}" = "$out" ]; then
	out="$PWD/$out"
fi
cd "$(dirname "$0")/.."
out=${out:-caddy}

export CGO_ENABLED="${CGO_ENABLED:-0}"

# `go tool xcaddy` would build xcaddy itself for $GOOS/$GOARCH, and then fail to run
# it here when they name another platform, so build the tool for this machine
# (`go tool -n` builds it and prints its path) and let it build Caddy for the
# target. With GOOS/GOARCH unset this is the README's `go tool xcaddy build ...`.
xcaddy=$(GOOS="$(go env GOHOSTOS)" GOARCH="$(go env GOHOSTARCH)" go tool -n xcaddy)

mkdir -p "$(dirname "$out")"
exec "$xcaddy" build v2.11.9 --with github.com/imagelb/caddy-imagelb@v0.0.0=. --output "$out"
