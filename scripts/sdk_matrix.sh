#!/usr/bin/env bash
# Run the SDK client tests against an older major line of each SDK.
#
# The project venv (.venv) tests the newest lines (openai 3.x, anthropic 2.x: httpx2);
# this script builds a second venv with the previous lines (openai 2.x, anthropic 0.x:
# httpx) and runs the same client tests there. The tests pick the fake upstream's
# httpx or httpx2 transport from what the installed SDK imports.
#
#   scripts/sdk_matrix.sh                 # older lines (default)
#   OPENAI_SPEC="openai<2" scripts/sdk_matrix.sh -x   # another line; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SDK_VENV:-.venv-sdk-old}
OPENAI_SPEC=${OPENAI_SPEC:-"openai>=2,<3"}
ANTHROPIC_SPEC=${ANTHROPIC_SPEC:-"anthropic>=0.70,<1"}

# reinstall when the specs or the project's dependencies change
key=$(printf '%s %s' "$OPENAI_SPEC" "$ANTHROPIC_SPEC" | cksum | cut -d' ' -f1)
stamp="$VENV/.installed-$key"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e . "$OPENAI_SPEC" "$ANTHROPIC_SPEC" \
        "pytest>=8" "pytest-asyncio>=0.24" "hypothesis>=6.100" "httpx>=0.27" "opentelemetry-sdk>=1.30"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

"$VENV/bin/python" -c 'import openai, anthropic; print(f"SDK matrix: openai {openai.__version__}, anthropic {anthropic.__version__}")'
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_clients_openai.py tests/test_clients_anthropic.py tests/test_clients_streams.py "$@"
