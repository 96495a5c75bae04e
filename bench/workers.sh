#!/usr/bin/env bash
# bench/workers.sh: sipyard with --workers 1 and --workers 2 in one run, same redis store,
# same sipp load; CPU µs per call of the whole server (supervisor + workers) and the ratio.
#
# Worker i is pinned to CPU i (SIPYARD_PIN_WORKERS=1); the single worker runs on CPU 0.
# sipp is pinned to CPU 1 (run_anchor.sh), so on a 2-core machine it shares a core with
# worker 1: the figure is CPU time per call, which that does not change much.
# Target (issue #14): us/call with 2 workers <= 1.15 x us/call with 1.
# TRANSPORT=un SIPP_X="-max_socket 64" spreads the calls over 64 sipp sockets (both workers).
# Then the Python floor (bench/floor_procs.py: the shared fixed-200 uvloop responder as 1 and
# as 2 SO_REUSEPORT processes, pinned the same way) under the same load, options scenario:
# what a second process costs a Python server that does nothing, printed as python_floor.
#
#   RATE=500 COUNT=5000 bench/workers.sh          (smoke)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/bench}"
RATE="${RATE:-2000}"
COUNT="${COUNT:-20000}"
SCENS="${SCENS:-register,invite_redirect}"
TRANSPORT="${TRANSPORT:-u1}"  # sipp: u1 = one socket (one worker gets all), un = one per call
PORT="${PORT:-5090}"
RPORT="${RPORT:-6390}"
OUT="${OUT:-/tmp/sipyard-bench/workers-$(date +%Y%m%d-%H%M%S)}"
PY="${PY:-$ROOT/.venv/bin/python}"
FLOOR="${FLOOR:-1}"  # 0 skips the Python floor's 1-vs-2-process run
FLOOR_COUNT="${FLOOR_COUNT:-20000}"  # ticks are 10 ms: enough calls for a few % resolution
[ -x "$PY" ] || PY="$(command -v python3)"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever venv runs it
WORK="$OUT/anchor"
[ -d "$WORK" ] || { cp -r "$SHARED" "$WORK"; chmod -R u+w "$WORK"; }

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$OUT/redis.log" 2>&1 &
RPID=$!
# wait for it to go: the next run binds the same port (and a ping would reach the old one)
# and stop a server left running when a step fails (set -e)
WPID=
trap 'kill "$RPID" $WPID 2>/dev/null || true; wait "$RPID" $WPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

run() {  # $1 = workers
  local n=$1 d="$OUT/w$1"
  mkdir -p "$d"
  redis-cli -p "$RPORT" flushall >/dev/null
  cat >"$d/sipyard.toml" <<TOML
[server]
realm = "127.0.0.1"
domains = ["localhost"]
data_dir = "data"
hooks_dir = "hooks"
workers = $n
[logging]
level = "warning"
[security]
open_registration = true
register_rate = 0
[store]
url = "redis://127.0.0.1:$RPORT/0"
[redirect]
require_auth = false
TOML
  if [ "$n" = 1 ]; then pin=(taskset -c 0); else pin=(env SIPYARD_PIN_WORKERS=1); fi
  "${pin[@]}" "$PY" -m sipyard.cli serve -c "$d/sipyard.toml" --log-level warning \
      --listen "udp:127.0.0.1:$PORT" --listen "tcp:127.0.0.1:$PORT" \
      >"$d/stdout" 2>>"$d/log" &
  local pid=$!
  WPID=$pid
  for _ in $(seq 150); do
    grep -q "listening on tcp" "$d/stdout" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "sipyard did not start, see $d/log" >&2; exit 1; }
    sleep 0.1
  done
  "$WORK/run_anchor.sh" -S none -p "$pid" -t "127.0.0.1:$PORT" -s "$SCENS" -r "$RATE" -T "$TRANSPORT" \
      ${SIPP_X:+-x "$SIPP_X"} \
      -m "$COUNT" -o "$d/sipp" | sed "s/target=/workers=$n target=/" | tee "$d/result.txt"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  WPID=
}

floor() {  # $1 = processes: the Python floor (bench/floor_procs.py) under the same load
  local n=$1 d="$OUT/floor$1"
  mkdir -p "$d"
  "$PY" "$HERE/floor_procs.py" "$n" "$PORT" "$SHARED" >"$d/stdout" 2>"$d/log" &
  local pid=$!
  WPID=$pid
  for _ in $(seq 50); do grep -q "listening on" "$d/stdout" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5  # the children bind after the parent's line
  "$WORK/run_anchor.sh" -S none -p "$pid" -t "127.0.0.1:$PORT" -s options -r "$RATE" -T "$TRANSPORT" \
      ${SIPP_X:+-x "$SIPP_X"} \
      -m "$FLOOR_COUNT" -o "$d/sipp" | sed "s/target=/workers=$n target=/" | tee "$d/result.txt"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  WPID=
}

run 1
run 2
if [ "$FLOOR" = 1 ]; then
  floor 1
  floor 2
  # the floor's ratio, printed as "python_floor" beside the scenarios below
  sed 's/scen=options/scen=python_floor/' "$OUT/floor1/result.txt" >>"$OUT/w1/result.txt"
  sed 's/scen=options/scen=python_floor/' "$OUT/floor2/result.txt" >>"$OUT/w2/result.txt"
fi
"$PY" - "$OUT/w1/result.txt" "$OUT/w2/result.txt" <<'PYEOF'
import sys
def load(p):
    out = {}
    for line in open(p):
        if line.startswith("RESULT"):
            f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            out[f["scen"]] = f
    return out
one, two = load(sys.argv[1]), load(sys.argv[2])
for scen, a in one.items():
    b = two.get(scen)
    if not b:
        continue
    try:
        r = f"{float(b['server_us_call']) / float(a['server_us_call']):.2f}"
    except (ValueError, ZeroDivisionError):
        r = "n/a"
    print(f"{scen:16s} workers=1 {a['server_us_call']:>7s} us/call  workers=2 "
          f"{b['server_us_call']:>7s} us/call  ratio {r} "
          f"({'what 2 processes cost the floor' if scen == 'python_floor' else 'target <= 1.15'}; failed "
          f"{a['failed']}/{b['failed']})")
PYEOF
echo "raw output: $OUT" >&2
