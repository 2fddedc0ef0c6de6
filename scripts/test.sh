#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine, then runs it:
# Debian packages (cross compilers, lld, mold, qemu-user; only when run as root),
# the package with its test extras, then ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    mapfile -t packages < <(grep -vE '^\s*(#|$)' scripts/debian-packages.txt)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

ruff check layoutkit tests bench
mypy
python3 -m pytest "$@"
