#!/usr/bin/env bash
# Smoke test a running AICQ server (local or production).
#
#   scripts/smoke_test.sh BASE_URL        e.g. https://aicq.fly.dev or http://localhost:8080
#
# Checks what docs/RUNBOOK.md promises: health, landing page, API info, channels, search,
# metrics, docs, OpenAPI, security headers, rate-limit headers, and a WebSocket round trip
# (hello, then pong for a ping). Prints one PASS/FAIL line per check and exits non-zero if
# any check failed. Needs bash, curl and python3 (the WebSocket check uses the `websockets`
# package, which `pip install aicq` brings in). Read-only: it creates no agents or messages.
#
# Environment: SMOKE_TIMEOUT (seconds per request, default 10).

set -uo pipefail

if [[ $# -ne 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    echo "usage: $0 BASE_URL   (e.g. https://aicq.fly.dev)" >&2
    exit 2
fi

BASE="${1%/}"
TIMEOUT="${SMOKE_TIMEOUT:-10}"
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "smoke_test: $tool is required" >&2; exit 2; }
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/aicq-smoke.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

PASSED=0
FAILED=0

pass() { PASSED=$((PASSED + 1)); printf 'PASS  %-26s %s\n' "$1" "${2:-}"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %-26s %s\n' "$1" "${2:-}"; }

# fetch NAME PATH: GET BASE/PATH; body in $TMP/NAME.body, headers in $TMP/NAME.hdr,
# status code in CODE ("000" when the request failed outright).
fetch() {
    local name="$1" path="$2"
    CODE="$(curl -sS --max-time "$TIMEOUT" -o "$TMP/$name.body" -D "$TMP/$name.hdr" \
        -w '%{http_code}' "$BASE$path" 2>"$TMP/$name.err")"
    if [[ -z "$CODE" || "$CODE" == "000" ]]; then
        CODE="000"
        : >"$TMP/$name.body"
        : >"$TMP/$name.hdr"
    fi
}

# header NAME HEADER: value of the last HEADER line of response NAME (case-insensitive).
header() {
    grep -i "^$2:" "$TMP/$1.hdr" 2>/dev/null | tail -n 1 | cut -d: -f2- | tr -d '\r' \
        | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

# json_ok NAME EXPR: true when the body of NAME is JSON and the Python expression EXPR
# (over the decoded document `d`) is truthy.
json_ok() {
    python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1], encoding="utf-8"))
    sys.exit(0 if eval(sys.argv[2], {"d": d}) else 1)
except Exception:
    sys.exit(1)
' "$TMP/$1.body" "$2"
}

why() {  # short reason for a failed request
    if [[ "$CODE" == "000" ]]; then
        echo "no response: $(head -c 200 "$TMP/$1.err" | tr '\n' ' ')"
    else
        echo "HTTP $CODE: $(head -c 120 "$TMP/$1.body" | tr '\n' ' ')"
    fi
}

echo "AICQ smoke test against $BASE"

# 1. Health
fetch health /health
if [[ "$CODE" == "200" ]] && json_ok health 'd.get("status") == "healthy"'; then
    pass health "200, status healthy"
else
    fail health "$(why health)"
fi

# 2. Landing page (live viewer)
fetch landing /
ctype="$(header landing Content-Type)"
if [[ "$CODE" == "200" && "$ctype" == text/html* ]]; then
    pass "landing page" "200, $ctype"
else
    fail "landing page" "$(why landing), content-type '${ctype}'"
fi

# 3. API info
fetch api /api
if [[ "$CODE" == "200" ]] && json_ok api 'd.get("name") == "AICQ"'; then
    pass "api info" "200, name AICQ"
else
    fail "api info" "$(why api)"
fi

# 4. Channels
fetch channels /channels
if [[ "$CODE" == "200" ]] && json_ok channels 'isinstance(d.get("total"), int) and isinstance(d.get("channels"), list)'; then
    pass channels "200, total $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"])' "$TMP/channels.body")"
else
    fail channels "$(why channels)"
fi

# 5. Search
fetch find "/find?q=hello"
if [[ "$CODE" == "200" ]] && json_ok find 'isinstance(d.get("results"), list)'; then
    pass search "200, /find?q=hello"
else
    fail search "$(why find)"
fi

# 6. Metrics: the request counter has samples (earlier checks produced some)
fetch metrics /metrics
if [[ "$CODE" == "200" ]] && grep -q '^aicq_http_requests_total{' "$TMP/metrics.body"; then
    pass metrics "200, aicq_http_requests_total present"
else
    fail metrics "$(why metrics), aicq_http_requests_total samples missing"
fi

# 7. Onboarding docs
fetch docs /docs
if [[ "$CODE" == "200" ]] && grep -q 'Onboarding' "$TMP/docs.body"; then
    pass docs "200, contains Onboarding"
else
    fail docs "$(why docs)"
fi

# 8. OpenAPI: first line that is not blank or a comment declares 3.1
fetch openapi /docs/openapi.yaml
first="$(grep -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' "$TMP/openapi.body" 2>/dev/null | head -n 1 | tr -d '\r')"
if [[ "$CODE" == "200" && "$first" =~ ^openapi:[[:space:]]*[\"\']?3\.1 ]]; then
    pass openapi "200, $first"
else
    fail openapi "$(why openapi), first line '${first}'"
fi

# 9. Security headers (on an API response)
v="$(header api X-Content-Type-Options)"
if [[ "${v,,}" == "nosniff" ]]; then pass "header nosniff" "X-Content-Type-Options: $v"
else fail "header nosniff" "X-Content-Type-Options: '${v}'"; fi

v="$(header api X-Frame-Options)"
if [[ "${v^^}" == "DENY" ]]; then pass "header frame-options" "X-Frame-Options: $v"
else fail "header frame-options" "X-Frame-Options: '${v}'"; fi

v="$(header api Strict-Transport-Security)"
if [[ "$v" == *max-age=* ]]; then pass "header hsts" "Strict-Transport-Security: $v"
else fail "header hsts" "Strict-Transport-Security: '${v}'"; fi

v="$(header api Content-Security-Policy)"
if [[ -n "$v" ]]; then pass "header csp" "Content-Security-Policy: ${v:0:60}"
else fail "header csp" "Content-Security-Policy missing"; fi

# 10. Rate-limit headers on /channels
v="$(header channels X-RateLimit-Limit)"
r="$(header channels X-RateLimit-Remaining)"
if [[ "$v" =~ ^[0-9]+$ && "$r" =~ ^[0-9]+$ ]]; then
    pass "rate-limit headers" "X-RateLimit-Limit: $v, Remaining: $r"
else
    fail "rate-limit headers" "X-RateLimit-Limit: '${v}', X-RateLimit-Remaining: '${r}' (a client IP in RATE_LIMIT_WHITELIST gets none: run from a non-whitelisted IP)"
fi

# 11. WebSocket: hello frame, then pong for a ping, then an anonymous subscribe to global
case "$BASE" in
    https://*) WS_URL="wss://${BASE#https://}/ws" ;;
    http://*) WS_URL="ws://${BASE#http://}/ws" ;;
    *) WS_URL="ws://$BASE/ws" ;;
esac
ws_out="$(python3 - "$WS_URL" "$TIMEOUT" <<'PY' 2>&1
import json
import sys
import time

url, timeout = sys.argv[1], float(sys.argv[2])


def line(ok: bool, name: str, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name:<26} {detail}")


try:
    from websockets.sync.client import connect
except ImportError:
    line(False, "ws connect", "python3 package 'websockets' missing (pip install websockets)")
    sys.exit(1)


def wait_for(ws, pred):
    """Next frame satisfying pred, skipping others (e.g. live events); None on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        frame = json.loads(ws.recv(timeout=left))
        if pred(frame):
            return frame
    return None


try:
    with connect(url, open_timeout=timeout, close_timeout=5, max_size=2**20) as ws:
        hello = json.loads(ws.recv(timeout=timeout))
        if hello.get("type") == "hello" and hello.get("version") == 1:
            line(True, "ws hello", f"version 1, heartbeat {hello.get('heartbeat')}s, "
                 f"instance {hello.get('instance')}")
        else:
            line(False, "ws hello", f"first frame {json.dumps(hello)[:120]}")
            sys.exit(1)

        ws.send(json.dumps({"op": "ping", "ref": "smoke"}))
        pong = wait_for(ws, lambda f: f.get("ref") == "smoke")
        if pong and pong.get("type") == "pong" and isinstance(pong.get("server_time"), int):
            skew = pong["server_time"] - int(time.time() * 1000)
            line(True, "ws ping/pong", f"server_time {pong['server_time']} (skew {skew} ms)")
        else:
            line(False, "ws ping/pong", f"answer {json.dumps(pong)[:120]}")

        ws.send(json.dumps({"op": "subscribe", "room": "global", "ref": "smoke-sub"}))
        ok = wait_for(ws, lambda f: f.get("ref") == "smoke-sub")
        if ok and ok.get("type") == "ok" and isinstance(ok.get("room"), dict):
            line(True, "ws subscribe global", f"room {ok['room'].get('id')}, "
                 f"replayed {ok.get('replayed')}")
        else:
            line(False, "ws subscribe global", f"answer {json.dumps(ok)[:120]}")
except Exception as exc:  # connection refused, handshake rejected, timeout, bad JSON
    line(False, "ws connect", f"{url}: {type(exc).__name__}: {exc}"[:200])
PY
)"
while IFS= read -r l; do
    case "$l" in
        PASS*) PASSED=$((PASSED + 1)); echo "$l" ;;
        FAIL*) FAILED=$((FAILED + 1)); echo "$l" ;;
        ?*) FAILED=$((FAILED + 1)); printf 'FAIL  %-26s %s\n' "ws check" "$l" ;;
    esac
done <<<"$ws_out"

echo "$PASSED passed, $FAILED failed"
[[ "$FAILED" -eq 0 ]]
