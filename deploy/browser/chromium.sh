#!/bin/sh
# Installs Debian's chromium for the review page's browser test (tests/e2e/test_review_page.py), which Playwright
# drives through executable_path: Playwright's own browser download does not work here. Idempotent: nothing to do
# when /usr/bin/chromium exists. Needs root and apt-get (Debian or Ubuntu).
set -eu

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deploy/browser/chromium.sh: $CHROMIUM is missing and there is no apt-get here; install Chromium" \
         "so that $CHROMIUM exists, then run make test again" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/browser/chromium.sh: $CHROMIUM is missing; installing it needs root:" \
         "sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists are read only when they do not know chromium yet (a fresh machine, or lists cleaned away).
if ! apt-cache show chromium >/dev/null 2>&1; then
    echo "deploy/browser/chromium.sh: apt-get update (the package lists do not know chromium)"
    apt-get update -q
fi
echo "deploy/browser/chromium.sh: installing Debian's chromium"
if ! apt-get install -y -q --no-install-recommends chromium; then
    # stale package lists name versions the mirror no longer has: read them again, once
    echo "deploy/browser/chromium.sh: the install failed; apt-get update, then once more"
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "deploy/browser/chromium.sh: apt-get installed chromium but $CHROMIUM is not there" >&2
    exit 1
fi
