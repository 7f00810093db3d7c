# Shared by scripts/demo and scripts/test: create .venv (Python >= 3.11) and install pathsentry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"pathsentry needs Python >= 3.11, found {sys.version.split()[0]}")
PYEOF
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.pathsentry-installed-$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing pathsentry ($1) into .venv" >&2
  python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  if [ "$1" = dev ]; then
    python -m pip install --quiet --disable-pip-version-check -e ".[dev]" >&2
  else
    python -m pip install --quiet --disable-pip-version-check -e . >&2
  fi
  touch "$stamp"
fi
