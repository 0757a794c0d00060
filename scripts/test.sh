#!/usr/bin/env bash
# Run the whole test suite (unit, integration in throwaway network namespaces, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
