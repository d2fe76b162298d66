#!/usr/bin/env bash
# Automated production deploy (docs/RUNBOOK.md, "Deployment Procedure", option 1).
#
#   scripts/deploy.sh
#
# 1. python -m pytest -q                      fail fast if tests break
# 2. build a wheel into a temp dir, check it carries migrations and web assets,
#    and python -c 'import aicq.app'          fail fast if the package does not build/import
# 3. fly deploy --strategy rolling            zero-downtime rolling deploy
# 4. wait for the new machines               (DEPLOY_WAIT seconds, default 10)
# 5. curl -sf $AICQ_URL/health | jq .        must report "healthy" (retried a few times)
#
# Environment: AICQ_URL (default https://aicq.fly.dev), FLY_APP (default: from fly.toml),
# DEPLOY_WAIT (default 10), HEALTH_RETRIES (default 6, 5 s apart), PYTHON (default python).

set -euo pipefail

cd "$(dirname "$0")/.."

AICQ_URL="${AICQ_URL:-https://aicq.fly.dev}"
AICQ_URL="${AICQ_URL%/}"
DEPLOY_WAIT="${DEPLOY_WAIT:-10}"
HEALTH_RETRIES="${HEALTH_RETRIES:-6}"
PYTHON="${PYTHON:-python}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

for tool in "$PYTHON" fly curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required but not on PATH"
done

step "1/5 Running tests: $PYTHON -m pytest -q"
"$PYTHON" -m pytest -q

step "2/5 Build check: wheel + import"
WHEEL_DIR="$(mktemp -d "${TMPDIR:-/tmp}/aicq-wheel.XXXXXX")"
trap 'rm -rf "$WHEEL_DIR"' EXIT
if "$PYTHON" -c 'import build' 2>/dev/null; then
    "$PYTHON" -m build --wheel --outdir "$WHEEL_DIR" .
else
    "$PYTHON" -m pip wheel --no-deps --quiet --wheel-dir "$WHEEL_DIR" .
fi
# The image installs this wheel without a source tree, so migrations/ and web/ must be
# inside it (pyproject force-includes them as aicq/_migrations and aicq/_web).
"$PYTHON" - "$WHEEL_DIR" <<'PY'
import pathlib
import sys
import zipfile

wheels = sorted(pathlib.Path(sys.argv[1]).glob("aicq-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one aicq wheel, found {[w.name for w in wheels]}")
names = zipfile.ZipFile(wheels[0]).namelist()
for prefix in ("aicq/app.py", "aicq/_migrations/000001_init.up.sql", "aicq/_web/"):
    if not any(n.startswith(prefix) for n in names):
        sys.exit(f"{wheels[0].name} lacks {prefix}")
print(f"built {wheels[0].name} ({len(names)} files)")
PY
"$PYTHON" -c 'import aicq.app'

step "3/5 Deploying: fly deploy --strategy rolling"
fly_args=(deploy --strategy rolling)
if [[ -n "${FLY_APP:-}" ]]; then
    fly_args+=(--app "$FLY_APP")
fi
fly "${fly_args[@]}"

step "4/5 Waiting ${DEPLOY_WAIT}s for new machines to start"
sleep "$DEPLOY_WAIT"

step "5/5 Verifying health: curl -sf $AICQ_URL/health | jq ."
for attempt in $(seq 1 "$HEALTH_RETRIES"); do
    if body="$(curl -sf --max-time 10 "$AICQ_URL/health")" \
        && jq -e '.status == "healthy"' >/dev/null <<<"$body"; then
        jq . <<<"$body"
        printf '\nDeploy complete. Full check: scripts/smoke_test.sh %s\n' "$AICQ_URL"
        exit 0
    fi
    printf 'health not ready (attempt %d/%d)\n' "$attempt" "$HEALTH_RETRIES" >&2
    if [[ "$attempt" -lt "$HEALTH_RETRIES" ]]; then
        sleep 5
    fi
done
[[ -n "${body:-}" ]] && jq . <<<"$body" >&2 || true
die "$AICQ_URL/health is not healthy after deploy; see 'fly status' and docs/RUNBOOK.md (Rollback Procedure)"
