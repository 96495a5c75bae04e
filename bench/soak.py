"""make soak: mixed sipp load on one sipyard for a long time; does memory stay flat?

Starts ``sipyard serve`` on 127.0.0.1 (as ``bench/run.sh`` does: uvloop, warning
log level, sqlite ``synchronous = "normal"``) with ``SOAK_USERS`` numeric lines,
registers them all once (``register_auth``), then runs four sipp scenarios of
``../shared/bench/scenarios`` side by side for ``SOAK_SECONDS``, each at a
quarter of ``SOAK_RATE`` calls/s:

* ``register_auth`` -- challenge + authenticated REGISTER;
* ``register`` -- an unauthenticated REGISTER, which this server (auth on)
  answers 401: a copy of the scenario expecting 401 (the phones' first try);
* ``invite_redirect`` -- INVITE to a registered line, answered 302;
* ``options`` -- OPTIONS to the server.

Every ``SOAK_INTERVAL`` seconds it samples the server's RSS and open fds, then
prints a table, sipp's success / failure counts and a plot: a PNG (matplotlib)
beside the table, or ASCII sparklines when matplotlib is absent.

The default rate, 600 calls/s, is half of what this machine kind answers with
no failures in this mix (README "Benchmarks": 1 500 REGISTER/s or redirected
INVITE/s, 4 000 OPTIONS/s, 750 µs per authenticated REGISTER). Loopback only.

    SOAK_SECONDS=600 SOAK_RATE=600 SOAK_INTERVAL=10 .venv/bin/python bench/soak.py

To see *what* grows, ``SOAK_TRACE=60,120,300`` runs the server under
tracemalloc (``bench/traced_serve.py``) and has it write a heap snapshot at the
first sample at or after each of those times, into ``OUT/heap``; compare two
with ``bench/traced_serve.py compare A B``. ``SOAK_NONCE_TTL`` shortens the
server's ``nonce_ttl`` (300 s) to see its plateau sooner.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCEN = Path(os.environ.get("SHARED", ROOT.parent / "shared" / "bench")) / "scenarios"
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
RATE = float(os.environ.get("SOAK_RATE", "600"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "10"))
USERS = int(os.environ.get("SOAK_USERS", "1000"))
PORT = int(os.environ.get("PORT", "5090"))
OUT = Path(os.environ.get("OUT", f"/tmp/sipyard-soak/{time.strftime('%Y%m%d-%H%M%S')}"))
TRACE = [float(t) for t in os.environ.get("SOAK_TRACE", "").split(",") if t.strip()]
NONCE_TTL = os.environ.get("SOAK_NONCE_TTL")
MIX = ("register_auth", "register", "invite_redirect", "options")
FIRST = 100000
SPARK = "▁▂▃▄▅▆▇█"


def write_config(d: Path) -> Path:
    lines = ["[server]", 'realm = "127.0.0.1"', 'domains = ["localhost"]', 'data_dir = "data"',
             'hooks_dir = "hooks"', f'extensions = "{FIRST}-{FIRST + USERS - 1}"',
             "max_expires = 3600", *([f"nonce_ttl = {NONCE_TTL}"] if NONCE_TTL else []),
             "[logging]", 'level = "warning"', "[security]",
             "register_rate = 0", "max_auth_failures = 0", "[store]", 'synchronous = "normal"',
             "[redirect]", "require_auth = false"]
    for i in range(USERS):
        lines += [f"[lines.{FIRST + i}]", 'secret = "secret"']
    cfg = d / "sipyard.toml"
    cfg.write_text("\n".join(lines) + "\n")
    with open(d / "users.csv", "w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(USERS):
            u = FIRST + i
            f.write(f"{u};[authentication username={u} password=secret];\n")
    # The plain REGISTER is challenged here: the same scenario, expecting the 401.
    xml = (SCEN / "register.xml").read_text().replace('response="200"', 'response="401"')
    (d / "register.xml").write_text(xml)
    for name in ("register_auth", "invite_redirect", "options"):
        shutil.copy(SCEN / f"{name}.xml", d / f"{name}.xml")
    return cfg


def sample(pid: int) -> tuple[int, int]:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def sipp(d: Path, scen: str, rate: float, *, count: int | None = None, seconds: int | None = None,
         lport: int) -> subprocess.Popen[bytes]:
    cmd = ["sipp", "-sf", str(d / f"{scen}.xml"), f"127.0.0.1:{PORT}", "-i", "127.0.0.1",
           "-p", str(lport), "-t", "u1", "-r", f"{rate:g}", "-rp", "1000", "-l", "2000",
           "-nostdin", "-buff_size", "4194304", "-trace_stat", "-stf", str(d / f"{scen}.stat.csv"),
           "-fd", str(max(1, int(INTERVAL))), "-trace_err",
           "-error_file", str(d / f"{scen}.errors.log")]
    if scen != "options":
        cmd += ["-inf", str(d / "users.csv")]
    if count is not None:
        cmd += ["-m", str(count)]
    if seconds is not None:
        cmd += ["-timeout", f"{seconds}s"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=str(d))


def sipp_counts(stat: Path) -> tuple[int, int, int]:
    """(successful, failed, retransmissions) from sipp's last statistics line."""
    try:
        rows = [r.split(";") for r in stat.read_text().splitlines() if r.strip()]
    except FileNotFoundError:
        return 0, 0, 0
    if len(rows) < 2:
        return 0, 0, 0
    head, last = rows[0], rows[-1]

    def col(name: str) -> int:
        try:
            return int(last[head.index(name)])
        except (ValueError, IndexError):
            return 0

    return col("SuccessfulCall(C)"), col("FailedCall(C)"), col("Retransmissions(C)")


def spark(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))]
                   for v in values)


def plot(samples: list[tuple[float, int, int]], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        rss = [s[1] for s in samples]
        fds = [s[2] for s in samples]
        return (f"RSS {min(rss) / 1024:.1f}–{max(rss) / 1024:.1f} MiB  {spark(rss)}\n"
                f"fds {min(fds)}–{max(fds)}            {spark(fds)}")
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([s[0] for s in samples], [s[1] / 1024 for s in samples], label="RSS (MiB)")
    ax.set_xlabel("s")
    ax.set_ylabel("RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot([s[0] for s in samples], [s[2] for s in samples], color="tab:orange", label="fds")
    ax2.set_ylabel("open fds")
    ax.set_title(f"sipyard soak: {RATE:g} calls/s mixed, {SECONDS} s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return f"plot: {path}"


def main() -> int:
    if shutil.which("sipp") is None:
        print("soak: sipp is not installed (make deps-bench)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = write_config(OUT)
    log = open(OUT / "sipyard.log", "w")  # noqa: SIM115 - lives as long as the server
    start = ([sys.executable, str(ROOT / "bench" / "traced_serve.py")] if TRACE
             else [sys.executable, "-m", "sipyard.cli"])
    server = subprocess.Popen(
        [*start, "serve", "-c", str(cfg), "--log-level", "warning",
         "--listen", f"udp:127.0.0.1:{PORT}", "--listen", f"tcp:127.0.0.1:{PORT}"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(ROOT),
        env={**os.environ, "TRACE_DIR": str(OUT / "heap")})
    try:
        assert server.stdout is not None
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 2 and time.monotonic() < deadline and server.poll() is None:
            if "listening on" in server.stdout.readline():
                seen += 1
        if seen < 2:
            print(f"soak: sipyard did not start, see {OUT / 'sipyard.log'}", file=sys.stderr)
            return 1
        print(f"# soak: sipyard pid {server.pid}, {RATE:g} calls/s for {SECONDS} s "
              f"({', '.join(MIX)}), samples every {INTERVAL:g} s, out {OUT}", flush=True)
        pre = sipp(OUT, "register_auth", min(RATE, 500), count=USERS, seconds=60, lport=15100)
        pre.wait()
        (OUT / "register_auth.stat.csv").rename(OUT / "preregister.stat.csv")
        t0 = time.monotonic()
        samples = [(0.0, *sample(server.pid))]
        procs = [sipp(OUT, scen, RATE / len(MIX), seconds=SECONDS, lport=15110 + i)
                 for i, scen in enumerate(MIX)]
        print(f"{'t (s)':>6} {'RSS (kB)':>9} {'fds':>5}", flush=True)
        print(f"{0:6.0f} {samples[0][1]:9d} {samples[0][2]:5d}", flush=True)
        while any(p.poll() is None for p in procs):
            time.sleep(max(0.0, t0 + INTERVAL * len(samples) - time.monotonic()))
            if server.poll() is not None:
                print("soak: sipyard died", file=sys.stderr)
                return 1
            s = (time.monotonic() - t0, *sample(server.pid))
            samples.append(s)
            if TRACE and s[0] >= TRACE[0]:
                TRACE.pop(0)
                server.send_signal(signal.SIGUSR2)
            print(f"{s[0]:6.0f} {s[1]:9d} {s[2]:5d}", flush=True)
            if s[0] > SECONDS + 60:
                for p in procs:
                    p.kill()
        print()
        print(f"{'scenario':16} {'ok':>9} {'failed':>7} {'retrans':>8}")
        failed_total = 0
        for scen in MIX:
            ok, failed, rt = sipp_counts(OUT / f"{scen}.stat.csv")
            failed_total += failed
            print(f"{scen:16} {ok:9d} {failed:7d} {rt:8d}")
        rss = [s[1] for s in samples]
        fds = [s[2] for s in samples]
        half = rss[len(rss) // 2:]
        print(f"\nRSS first {rss[0]} kB, max {max(rss)} kB, last {rss[-1]} kB; second half "
              f"{min(half)}–{max(half)} kB; fds {min(fds)}–{max(fds)}")
        print(plot(samples, OUT / "soak.png"))
        with open(OUT / "samples.csv", "w") as f:
            f.write("t_s,rss_kb,fds\n")
            for s in samples:
                f.write(f"{s[0]:.1f},{s[1]},{s[2]}\n")
        return 0 if failed_total == 0 else 2
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
