# Sourced by demo.sh and test.sh: make .venv (Python 3.11) if missing and install coldpress into it.
# Idempotent: the (editable) install runs again only when pyproject.toml changed since the last one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    if command -v python3.11 >/dev/null 2>&1; then
        PYTHON=python3.11
    elif command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        PYTHON=python3
    else
        echo "coldpress needs Python 3.11: install python3.11 and run this again" >&2
        exit 1
    fi
    echo "creating .venv with $PYTHON" >&2
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.coldpress-installed
WANT="$(.venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')"
if [ ! -x .venv/bin/coldpress ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$WANT" > "$STAMP"
fi
