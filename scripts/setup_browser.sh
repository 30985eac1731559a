#!/usr/bin/env bash
# Installs Debian's headless Chromium for the report tests, once.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
else
  echo "chromium is not installed and cannot be installed here; the browser test will be skipped" >&2
fi
