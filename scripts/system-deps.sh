#!/usr/bin/env bash
# The Debian packages the test suite drives for real, installed when missing:
#   chromium    the browser tests (serve_test.py, report_test.py) drive Debian's Chromium
#               through Playwright; Playwright's own browser downloads are never used
#   postgresql  the tune tests start their own PostgreSQL server on 127.0.0.1
#   dataset-fashion-mnist  a second real data set: sweeps and studies that vary `dataset`
#               are checked against runs trained alone on it
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null || missing+=(postgresql)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
