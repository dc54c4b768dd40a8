#!/usr/bin/env bash
# Refreshes the vendored Swagger UI from the npm registry. Run by hand, never by cargo.
#   triggers-http/assets/docs/vendor/refresh.sh [VERSION]     (default: the version in VERSION)
# Then rebuild, run the browser suite (tests/browser) and commit the changed files.
set -euo pipefail
cd "$(dirname "$0")"
version="${1:-$(cat VERSION)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
cp "$tmp/package/swagger-ui-bundle.js" "$tmp/package/LICENSE" "$tmp/package/NOTICE" .
# The source map is not vendored: drop the reference to it.
sed '/sourceMappingURL=/d' "$tmp/package/swagger-ui.css" > swagger-ui.css
echo "$version" > VERSION
echo "vendored swagger-ui-dist@$version"
