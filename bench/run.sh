#!/usr/bin/env bash
# make bench: the ../shared/bench scenarios against Kamailio and sipyard in one run.
#
# Each server runs pinned to CPU 0 and sipp to CPU 1 (run_anchor.sh). The figure
# that matters is the same-run ratio of server CPU µs per call (server_us_call):
# absolute numbers move 3x between machines and ±25 % between runs.
#
#   RATE=10000 COUNT=100000 bench/run.sh          (defaults)
#   SCENS=options bench/run.sh                     (a subset)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/bench}"
RATE="${RATE:-10000}"
COUNT="${COUNT:-100000}"
SCENS="${SCENS:-register,invite_redirect,options}"
PORT="${PORT:-5080}"
OUT="${OUT:-/tmp/sipyard-bench/$(date +%Y%m%d-%H%M%S)}"
PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT"

# run_anchor.sh reads scenarios/ beside itself: work on a copy (shared/ is read-only)
WORK="$OUT/anchor"
cp -r "$SHARED" "$WORK"
chmod -R u+w "$WORK"

echo "# kamailio: $SCENS at $RATE/s, $COUNT calls" >&2
"$WORK/run_anchor.sh" -s "$SCENS" -r "$RATE" -m "$COUNT" -o "$OUT/kamailio" | tee "$OUT/kamailio.txt"

start_sipyard() {  # $1 = config file; prints the PID
  taskset -c 0 "$PY" -m sipyard.cli serve -c "$1" --log-level warning \
      --listen "udp:127.0.0.1:$PORT" --listen "tcp:127.0.0.1:$PORT" \
      >"$OUT/sipyard.stdout" 2>>"$OUT/sipyard.log" &
  local pid=$!
  for _ in $(seq 100); do
    grep -q "listening on tcp" "$OUT/sipyard.stdout" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "sipyard did not start, see $OUT/sipyard.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$pid"
}

stop_sipyard() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# --- sipyard, configured as the Kamailio anchor is: no auth, no logging per request ---
D="$OUT/sipyard-open"; mkdir -p "$D"
cat >"$D/sipyard.toml" <<EOF
[server]
realm = "127.0.0.1"
domains = ["localhost"]
data_dir = "data"
hooks_dir = "hooks"
max_expires = 3600
[logging]
level = "warning"
[security]
open_registration = true
register_rate = 0
[store]
synchronous = "normal"
[redirect]
require_auth = false
EOF
PID=$(start_sipyard "$D/sipyard.toml")
echo "# sipyard pid $PID: $SCENS" >&2
"$WORK/run_anchor.sh" -S none -p "$PID" -t "127.0.0.1:$PORT" -s "$SCENS" -r "$RATE" -m "$COUNT" \
    -o "$OUT/sipyard" | tee "$OUT/sipyard.txt"
RSS_OPEN=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
stop_sipyard "$PID"

# --- sipyard alone: authenticated REGISTER (challenge + digest), numeric lines ---
AUTH_N=$(( COUNT < 10000 ? COUNT : 10000 ))
D="$OUT/sipyard-auth"; mkdir -p "$D"
"$PY" - "$D" "$AUTH_N" "$WORK/scenarios/users.csv" <<'PYEOF'
import sys
d, n, csv = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first = 100000
lines = ["[server]", 'realm = "127.0.0.1"', 'domains = ["localhost"]', 'data_dir = "data"',
         'hooks_dir = "hooks"', f'extensions = "{first}-{first + n - 1}"',
         "[logging]", 'level = "warning"', "[security]", "register_rate = 0",
         "max_auth_failures = 0", "[store]", 'synchronous = "normal"']
for i in range(n):
    lines += [f"[lines.{first + i}]", 'secret = "secret"']
open(f"{d}/sipyard.toml", "w").write("\n".join(lines) + "\n")
with open(csv, "w") as f:
    f.write("SEQUENTIAL\n")
    for i in range(n):
        u = first + i
        f.write(f"{u};[authentication username={u} password=secret];\n")
PYEOF
PID=$(start_sipyard "$D/sipyard.toml")
echo "# sipyard pid $PID: register_auth" >&2
"$WORK/run_anchor.sh" -S none -p "$PID" -t "127.0.0.1:$PORT" -s register_auth -r "$RATE" \
    -m "$COUNT" -o "$OUT/sipyard-auth" | tee "$OUT/sipyard-auth.txt"
stop_sipyard "$PID"

# --- the Python floor: a uvloop responder that answers every request with a fixed 200 ---
# (no parsing, no state). What it costs per call bounds any Python server from below.
taskset -c 0 "$PY" "$WORK/py_udp_200.py" --mode uvloop --port "$PORT" >"$OUT/echo.stdout" 2>&1 &
EPID=$!
sleep 1
echo "# python echo pid $EPID: options" >&2
"$WORK/run_anchor.sh" -S none -p "$EPID" -t "127.0.0.1:$PORT" -s options -r "$RATE" \
    -m "$COUNT" -o "$OUT/echo" | tee "$OUT/echo.txt"
kill "$EPID" 2>/dev/null || true; wait "$EPID" 2>/dev/null || true

# --- ratios ---
echo
echo "== same-run ratio of server CPU µs per call (sipyard / Kamailio); target <= 1.5 =="
"$PY" - "$OUT/kamailio.txt" "$OUT/sipyard.txt" "$OUT/sipyard-auth.txt" "$RSS_OPEN" \
    "$OUT/echo.txt" <<'PYEOF'
import re, sys
def load(p):
    out = {}
    for line in open(p):
        if line.startswith("RESULT"):
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            out[kv["scen"]] = kv
    return out
k, s, a = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
for scen, ks in k.items():
    ss = s.get(scen)
    if not ss:
        continue
    try:
        ratio = float(ss["server_us_call"]) / float(ks["server_us_call"])
        r = f"{ratio:.2f}"
    except (ValueError, ZeroDivisionError):
        r = "n/a"
    print(f"{scen:16s} kamailio {ks['server_us_call']:>7s} us/call  sipyard {ss['server_us_call']:>7s} "
          f"us/call  ratio {r}  (sipyard failed={ss['failed']} retrans={ss['retrans']}; "
          f"kamailio failed={ks['failed']} retrans={ks['retrans']})")
for scen, ss in a.items():
    print(f"{scen:16s} sipyard {ss['server_us_call']} us/registration (challenge + authenticated "
          f"REGISTER), failed={ss['failed']} retrans={ss['retrans']}")
print(f"sipyard RSS after the open run: {int(sys.argv[4]) // 1024} MiB")
e = load(sys.argv[5]).get("options")
if e and "options" in k:
    floor = float(e["server_us_call"]) / float(k["options"]["server_us_call"])
    print(f"python floor     fixed-200 uvloop echo {e['server_us_call']} us/call on options = "
          f"{floor:.2f} x Kamailio (failed={e['failed']} retrans={e['retrans']})")
PYEOF
echo
echo "== redirect: a request whose chain suspends once vs an unsuspended one =="
"$PY" "$HERE/suspend_bench.py" 2000
echo
echo "== store: memory per binding and restart time with 100 000 bindings =="
"$PY" "$HERE/store_bench.py" 100000
echo
echo "== --workers 1 vs --workers 2 (redis store, each worker pinned) =="
OUT="$OUT/workers" PY="$PY" RATE="$RATE" COUNT="$COUNT" PORT=$((PORT + 10)) "$HERE/workers.sh"
echo "raw output: $OUT" >&2
