#!/usr/bin/env bash
# make bench: the ../shared/bench scenarios against Kamailio and sipyard in one run.
#
# Each server runs pinned to CPU 0 and sipp to CPU 1 (run_anchor.sh, run_proxy_anchor.sh).
# The figure that matters is the same-run ratio of server CPU µs per call
# (server_us_call): absolute numbers move 3x between machines and ±25 % between runs.
#
#   RATE=10000 COUNT=100000 bench/run.sh          (defaults)
#   SCENS=options bench/run.sh                     (a subset)
#
# SCENS: register, invite_redirect, options (run_anchor.sh: Kamailio's registrar vs
# sipyard, open registration), register_auth (digest REGISTER: Kamailio with
# KAM_DEFS="-A WITH_AUTH" vs sipyard with 10 000 numeric lines), proxy_call (whole calls,
# INVITE/100/180/200/ACK/BYE/200, through Kamailio's stateful proxy (kamailio-proxy.cfg) vs
# sipyard in proxy mode; run_proxy_anchor.sh at PROXY_RATE calls/s, PROXY_COUNT calls,
# both sampled PROXY_SETTLE s past the last call for deferred work).
# MICRO=0 skips the in-process micro benchmarks (suspension, store) at the end.
# A tiny smoke run: RATE=200 COUNT=2000 PROXY_RATE=200 PROXY_COUNT=1000 MICRO=0 \
#                   SCENS=register_auth,proxy_call bench/run.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"  # python -m sipyard.cli imports the sipyard of this tree
SHARED="${SHARED:-$ROOT/../shared/bench}"
RATE="${RATE:-10000}"
COUNT="${COUNT:-100000}"
SCENS="${SCENS:-register,invite_redirect,options,register_auth,proxy_call}"
PROXY_RATE="${PROXY_RATE:-2000}"
PROXY_COUNT="${PROXY_COUNT:-20000}"
PROXY_SETTLE="${PROXY_SETTLE:-6}"
MICRO="${MICRO:-1}"
PORT="${PORT:-5080}"
OUT="${OUT:-/tmp/sipyard-bench/$(date +%Y%m%d-%H%M%S)}"
PY="${PY:-$ROOT/.venv/bin/python}"
has() { case ",$SCENS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# the run_anchor.sh scenarios (register_auth and proxy_call have their own runs)
ANCHOR=$(echo "$SCENS" | tr , '\n' | grep -vx -e register_auth -e proxy_call | paste -sd, - || true)
mkdir -p "$OUT"

# run_anchor.sh reads scenarios/ beside itself: work on a copy (shared/ is read-only)
WORK="$OUT/anchor"
cp -r "$SHARED" "$WORK"
chmod -R u+w "$WORK"

: >"$OUT/kamailio.txt"; : >"$OUT/sipyard.txt"; : >"$OUT/sipyard-auth.txt"; : >"$OUT/echo.txt"
if [ -n "$ANCHOR" ]; then
  echo "# kamailio: $ANCHOR at $RATE/s, $COUNT calls" >&2
  "$WORK/run_anchor.sh" -s "$ANCHOR" -r "$RATE" -m "$COUNT" -o "$OUT/kamailio" | tee "$OUT/kamailio.txt"
fi
if has register_auth; then
  # Kamailio's digest anchor (auth module, nonce checks, password "secret" for every user)
  echo "# kamailio (-A WITH_AUTH): register_auth at $RATE/s, $COUNT calls" >&2
  KAM_DEFS="-A WITH_AUTH" "$WORK/run_anchor.sh" -s register_auth -r "$RATE" -m "$COUNT" \
      -o "$OUT/kamailio-auth" | tee -a "$OUT/kamailio.txt"
fi

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

stop_sipyard() {  # by PID; wait until it is gone (the next run binds the same port)
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null || true
}

# --- sipyard, configured as the Kamailio anchor is: no auth, no logging per request ---
open_config() {  # $1 = dir, $2 = [server] mode
  mkdir -p "$1"
  cat >"$1/sipyard.toml" <<EOF
[server]
realm = "127.0.0.1"
domains = ["localhost"]
data_dir = "data"
hooks_dir = "hooks"
max_expires = 3600
mode = "$2"
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
}
RSS_OPEN=0
if [ -n "$ANCHOR" ]; then
  D="$OUT/sipyard-open"; open_config "$D" redirect
  PID=$(start_sipyard "$D/sipyard.toml")
  echo "# sipyard pid $PID: $ANCHOR" >&2
  "$WORK/run_anchor.sh" -S none -p "$PID" -t "127.0.0.1:$PORT" -s "$ANCHOR" -r "$RATE" -m "$COUNT" \
      -o "$OUT/sipyard" | tee "$OUT/sipyard.txt"
  RSS_OPEN=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  stop_sipyard "$PID"
fi

# --- whole calls through a stateful proxy: Kamailio (kamailio-proxy.cfg) vs sipyard ---
# The anchor registers the users through the proxy with its one sipp UAS as Contact, then
# its UAC calls them. sipyard needs proxy mode, open registration (the anchor's REGISTERs
# carry no credentials) and no auth on INVITE (Kamailio's cfg has none either); 127.0.0.1
# is its realm, so the UAC's Request-URIs are its users. Run before the register_auth
# step below, which rewrites scenarios/users.csv.
if has proxy_call; then
  echo "# kamailio: proxy_call at $PROXY_RATE/s, $PROXY_COUNT calls" >&2
  "$WORK/run_proxy_anchor.sh" -r "$PROXY_RATE" -m "$PROXY_COUNT" -w "$PROXY_SETTLE" \
      -o "$OUT/kamailio-proxy" | tee -a "$OUT/kamailio.txt"
  D="$OUT/sipyard-proxy"; open_config "$D" proxy
  PID=$(start_sipyard "$D/sipyard.toml")
  echo "# sipyard pid $PID: proxy_call" >&2
  "$WORK/run_proxy_anchor.sh" -S none -p "$PID" -t "127.0.0.1:$PORT" -r "$PROXY_RATE" \
      -m "$PROXY_COUNT" -w "$PROXY_SETTLE" -o "$OUT/sipyard-proxy" | tee -a "$OUT/sipyard.txt"
  stop_sipyard "$PID"
fi

# --- sipyard: authenticated REGISTER (challenge + digest), numeric lines ---
if has register_auth; then
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
fi

# --- the Python floor: a uvloop responder that answers every request with a fixed 200 ---
# (no parsing, no state). What it costs per call bounds any Python server from below.
if has options; then
  taskset -c 0 "$PY" "$WORK/py_udp_200.py" --mode uvloop --port "$PORT" >"$OUT/echo.stdout" 2>&1 &
  EPID=$!
  sleep 1
  echo "# python echo pid $EPID: options" >&2
  "$WORK/run_anchor.sh" -S none -p "$EPID" -t "127.0.0.1:$PORT" -s options -r "$RATE" \
      -m "$COUNT" -o "$OUT/echo" | tee "$OUT/echo.txt"
  kill "$EPID" 2>/dev/null || true; wait "$EPID" 2>/dev/null || true
fi

# --- ratios ---
echo
echo "== same-run ratio of server CPU µs per call (sipyard / Kamailio) =="
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
k, s = load(sys.argv[1]), load(sys.argv[2])
s.update(load(sys.argv[3]))  # register_auth: its own sipyard run (numeric lines with secrets)
# issue #11's bar: <= 2.5 x Kamailio (3 x for register_auth; the aim beyond it is 1.5 x);
# issue #12's: whole proxied calls <= 2.5 x
TARGET = {"proxy_call": "2.5", "register_auth": "3 (aim 1.5)"}
WHAT = {"register_auth": "per authenticated registration (401 + digest REGISTER)",
        "proxy_call": "per whole call through the proxy (INVITE/100/180/200/ACK/BYE/200)"}
for scen, ks in k.items():
    ss = s.get(scen)
    if not ss:
        continue
    try:
        ratio = float(ss["server_us_call"]) / float(ks["server_us_call"])
        r = f"{ratio:.2f}"
    except (ValueError, ZeroDivisionError, KeyError):
        r = "n/a"
    print(f"{scen:16s} kamailio {ks.get('server_us_call', 'n/a'):>7s} us/call  sipyard "
          f"{ss.get('server_us_call', 'n/a'):>7s} us/call  ratio {r} (target <= "
          f"{TARGET.get(scen, '2.5 (aim 1.5)')})  (sipyard failed={ss.get('failed')} "
          f"retrans={ss.get('retrans')}; kamailio failed={ks.get('failed')} "
          f"retrans={ks.get('retrans')})")
    if scen in WHAT:
        print(f"{'':16s} {WHAT[scen]}; rate {ss.get('target_rate')}/s, calls {ss.get('calls')}")
if int(sys.argv[4]):
    print(f"sipyard RSS after the open run: {int(sys.argv[4]) // 1024} MiB")
e = load(sys.argv[5]).get("options")
if e and "options" in k:
    floor = float(e["server_us_call"]) / float(k["options"]["server_us_call"])
    print(f"python floor     fixed-200 uvloop echo {e['server_us_call']} us/call on options = "
          f"{floor:.2f} x Kamailio (failed={e['failed']} retrans={e['retrans']})")
PYEOF
if [ "$MICRO" != 0 ]; then
  echo
  echo "== redirect: a request whose chain suspends once vs an unsuspended one =="
  "$PY" "$HERE/suspend_bench.py" 2000
  echo
  echo "== store: memory per binding and restart time with 100 000 bindings =="
  "$PY" "$HERE/store_bench.py" 100000
fi
# the workers comparison covers the registrar scenarios only (none when they were not asked for)
WSCENS=$(echo "$SCENS" | tr , '\n' | grep -x -e register -e invite_redirect | paste -sd, - || true)
if [ "${WORKERS:-1}" != 0 ] && [ -n "$WSCENS" ]; then
  echo
  echo "== --workers 1 vs --workers 2 (redis store, each worker pinned) =="
  # redis-backed: the REGISTER path waits on redis, far below 10 000/s on one core; the
  # ratio of 2 workers to 1 is what counts, at a rate both sustain
  echo "-- one sipp socket (one 4-tuple: the kernel gives every packet to one worker)"
  OUT="$OUT/workers" PY="$PY" RATE="${WORKERS_RATE:-1000}" COUNT="${WORKERS_COUNT:-10000}" \
      FLOOR=0 PORT=$((PORT + 10)) SCENS="$WSCENS" "$HERE/workers.sh"
  echo "-- 64 sipp sockets (the load spread over both workers, each at half the rate);"
  echo "   python_floor: the fixed-200 responder as 1 and as 2 processes under the same load"
  OUT="$OUT/workers-spread" PY="$PY" RATE="${WORKERS_RATE:-1000}" \
      COUNT="${WORKERS_COUNT:-10000}" TRANSPORT=un SIPP_X="-max_socket 64" \
      PORT=$((PORT + 10)) SCENS="$WSCENS" "$HERE/workers.sh"
fi
echo "raw output: $OUT" >&2
