#!/usr/bin/env bash
# Renders a page in Debian's headless chromium at a phone's size and saves a screenshot.
#
#   bash tests/browser/screenshot.sh URL OUT.png
#
# Installs chromium with apt-get when /usr/bin/chromium is missing (Debian, as root). Exits
# non-zero, saying what to run, when it cannot; never skips. Bounded in time.
set -euo pipefail

url=${1:?usage: screenshot.sh URL OUT.png}
out=${2:?usage: screenshot.sh URL OUT.png}
chromium=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -x $chromium ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "screenshot.sh: $chromium is missing; install it with: apt-get update && apt-get install -y chromium" >&2
        exit 1
    fi
    echo "screenshot.sh: installing chromium (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2 || true
    if ! timeout 600 apt-get install -y -qq chromium >&2; then
        echo "screenshot.sh: could not install chromium; run: apt-get update && apt-get install -y chromium" >&2
        exit 1
    fi
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
rm -f "$out"
# A fresh profile, no network besides the page, no background services.
timeout 90 "$chromium" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --disable-background-networking --disable-component-update --disable-sync \
    --no-first-run --hide-scrollbars --user-data-dir="$profile" \
    --window-size=390,844 --screenshot="$out" "$url" >&2

if [[ ! -s $out ]]; then
    echo "screenshot.sh: chromium wrote no screenshot to $out" >&2
    exit 1
fi
size=$(stat -c %s "$out")
if [[ $(head -c 8 "$out" | od -An -tx1 | tr -d ' \n') != 89504e470d0a1a0a ]]; then
    echo "screenshot.sh: $out is not a PNG" >&2
    exit 1
fi
echo "screenshot.sh: $out ($size bytes)"
