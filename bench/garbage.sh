#!/bin/bash
# bench/garbage.sh: PROTOS-style garbage (tests/hostile.py) for GARBAGE_SECONDS (300) against
# a real server on loopback; prints RSS after warm-up, per round, and after the transactions
# expired. Issue #16: "repeated for 5 minutes leaves RSS flat".
ROOT="$(cd "$(dirname "$0")/.." && pwd)"; cd "$ROOT"
# PY: another checkout's virtualenv will do; the server runs this tree's code either way
PY=${PY:-$ROOT/.venv/bin/python}
D=$(mktemp -d); PORT=${PORT:-5097}
cat > $D/sipyard.toml <<EOT
[server]
realm = "127.0.0.1"
data_dir = "data"
hooks_dir = "hooks"
[logging]
level = "warning"
[security]
sweep_interval = 5.0
EOT
cd $D; PYTHONPATH="$ROOT" "$PY" -m sipyard.cli serve -c sipyard.toml --log-level warning --listen udp:127.0.0.1:$PORT > out 2> log &
PID=$!; sleep 2
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
cd "$ROOT"
"$PY" tests/hostile.py garbage 127.0.0.1 $PORT --count 5000 --sources 500 > /dev/null
sleep 45; BASE=$(rss); echo "baseline after one warm-up round + expiry: $BASE kB"
END=$(( $(date +%s) + ${GARBAGE_SECONDS:-300} )); ROUNDS=0; SENT=0
while [ $(date +%s) -lt $END ]; do
  "$PY" tests/hostile.py garbage 127.0.0.1 $PORT --count 5000 --sources 500 > /dev/null
  ROUNDS=$((ROUNDS+1)); SENT=$((SENT+5000)); echo "round $ROUNDS: rss $(rss) kB"
done
sleep 45; AFTER=$(rss)
echo "after $ROUNDS rounds ($SENT datagrams) and 45 s: $AFTER kB ($(( (AFTER-BASE)*100/BASE ))% vs baseline)"
kill $PID
