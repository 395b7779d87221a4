#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Two processes (pytest-xdist): much of the suite waits on storage, Ray and Beam rather than computing;
# the Ray tests run in one of them (tests/conftest.py). COLDPRESS_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -q -n "${COLDPRESS_TEST_WORKERS:-2}" --dist loadgroup "$@"
