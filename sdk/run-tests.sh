#!/usr/bin/env bash
# The Python and TypeScript SDK tests against a real gateway: builds the `tollgate` binary from
# the workspace, starts it on 127.0.0.1 (a free port, a temporary data dir, SQLite), creates a
# product, plan, subscription and HS256 credential with the printed bootstrap key, then runs
# pytest (sdk/python) and node --test (sdk/js) with TOLLGATE_TEST_* pointing at it. Then the
# browser tests: CORS (sdk/browser) and the web console (sdk/console, which starts gateways of
# its own and the fake upstream; TOLLGATE_CONSOLE_SCREENSHOTS=docs/console rewrites the README's
# screenshots).
#
# Needs: cargo, python3 with PyJWT[crypto] and pytest (TOLLGATE_TEST_PYTHON picks the
# interpreter; .ci/run passes its venv's), node >= 20, Chromium (/usr/bin/chromium, or
# TOLLGATE_TEST_CHROMIUM) for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
PYTHON="${TOLLGATE_TEST_PYTHON:-python3}"

log() { printf '== sdk: %s\n' "$*" >&2; }

log "building the gateway"
cargo build --quiet -p tollgate --bin tollgate -p fake-upstream --bin fake-upstream
BIN="$CARGO_TARGET_DIR/debug/tollgate"
UPSTREAM_BIN="$CARGO_TARGET_DIR/debug/fake-upstream"

DATA="$(mktemp -d)"
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT

log "starting it on 127.0.0.1 (data in $DATA)"
env -u TOLLGATE_CONFIG \
    TOLLGATE_DATA_DIR="$DATA" \
    TOLLGATE_DATABASE_URL="sqlite://$DATA/tollgate.db" \
    TOLLGATE_LOG_JSON=true \
    RUST_LOG=info \
    "$BIN" serve --listen 127.0.0.1:0 >"$DATA/stdout" 2>"$DATA/stderr" &
PID=$!

ADDR=""
for _ in $(seq 1 300); do
    ADDR="$("$PYTHON" - "$DATA/stderr" <<'EOF'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    fields = rec.get("fields", rec)
    if "listening" in str(fields.get("message", "")) and fields.get("addr"):
        print(fields["addr"])
        break
EOF
)"
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$DATA/stderr" >&2; echo "the gateway exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$DATA/stderr" >&2; echo "the gateway did not start" >&2; exit 1; }
OWNER_KEY="$(grep -E '^    [a-z]+_[A-Za-z0-9]+$' "$DATA/stdout" | head -n1 | tr -d ' ')"
[ -n "$OWNER_KEY" ] || { echo "no bootstrap key printed" >&2; exit 1; }
export TOLLGATE_TEST_URL="http://$ADDR"
export TOLLGATE_TEST_OWNER_KEY="$OWNER_KEY"
log "gateway at $TOLLGATE_TEST_URL"

# Product (the built-in mock models) → plan → subscription → HS256 credential.
eval "$("$PYTHON" - <<'EOF'
import json, os, shlex, urllib.request

base, key = os.environ["TOLLGATE_TEST_URL"], os.environ["TOLLGATE_TEST_OWNER_KEY"]

def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        assert res.status == 201, (path, res.status)
        return json.loads(res.read())

product = post("/v1/products", {"name": "SDK tests", "models": ["mock-chat", "mock-embed", "mock-image"]})
plan = post("/v1/plans", {"product_id": product["id"], "name": "sdk", "limits": {"requests_per_minute": 6000}})
sub = post("/v1/subscriptions", {"plan_id": plan["id"]})
cred = post(f"/v1/subscriptions/{sub['id']}/credentials", {"type": "jwt_hs256"})
for name, value in [("TOLLGATE_TEST_SUBSCRIPTION", sub["id"]), ("TOLLGATE_TEST_KID", cred["kid"]),
                    ("TOLLGATE_TEST_SECRET", cred["secret"])]:
    print(f"export {name}={shlex.quote(value)}")
EOF
)"
export TOLLGATE_TEST_REQUIRE_GATEWAY=1

log "python: pytest"
(cd sdk/python && "$PYTHON" -m pytest -q -p no:cacheprovider)

log "typescript: node --test"
(cd sdk/js && node --test)

log "browser: a page on another origin streams a chat in Chromium (CORS)"
[ -d sdk/browser/node_modules/playwright-core ] || (cd sdk/browser && npm ci --no-audit --no-fund --silent)
(cd sdk/browser && node --test)

log "console: the developer portal in Chromium (the journey, axe in light and dark, the keyboard alone)"
[ -d sdk/console/node_modules/@axe-core/playwright ] || (cd sdk/console && npm ci --no-audit --no-fund --silent)
(cd sdk/console && TOLLGATE_TEST_BIN="$BIN" TOLLGATE_TEST_UPSTREAM_BIN="$UPSTREAM_BIN" node --test)
