"""State that every worker and host must agree on, shared through the Redis store.

Started by ``sipyard serve`` whenever ``[store] url`` is Redis (one worker or
many, one host or several). Nothing here sits on the request path: the
guard, the authenticator and the call table keep answering from memory, and
this module mirrors their decisions to Redis and back in the background
(writes at once, fire-and-forget; reads every ``SYNC_SECONDS``).

=====================  ======================  ==========================================
state                  where                   why
=====================  ======================  ==========================================
bindings               Redis (the store)       write-through, one checked script per write
run state, presence    Redis (store state)     a change is polled by every process and
                                               applied with a reload (≤ 1 s)
digest nonce secret    Redis ``cluster:secret``  every process must take every nonce as ours;
                                               also keys the flow tokens (Path, RFC 5626)
nonce counts (replay)  per process, by design  a nonce names its issuer (random 16-bit
                                               node id); another node answers it STALE,
                                               so each count lives in exactly one table
auth failures          Redis ``fail:<ip>``     INCR per failure, expires after the window
bans                   Redis ``ban:<ip>``      set by whoever bans, indexed by end time in
                       and ``bans``            ``bans``; polled into every guard
REGISTER rate limit    per process             each of N workers allows rate/N per source
                                               (the kernel spreads a source's ports over
                                               the workers; a one-port source is held to
                                               rate/N; a shared counter would cost a round
                                               trip per request)
active calls (limits)  Redis ``calls:<node>``  each process publishes its per-line counts
                       and ``callnodes``       (and itself in ``callnodes``);
                                               ``max_calls`` adds the others' (≤ 1 s old)
transactions, dialogs  per process (owner)     Call-ID ownership sends every packet of a
                                               call to the process that holds them; calls-
                                               free requests stay where they arrive
                                               (sipyard.cluster.worker)
trunk registrations    worker 0 only           ``OpsContext.primary`` (one per site)
TCP connections        per process             a connection is a socket of one process;
                                               the workers of a host announce theirs and
                                               write for each other (cluster.handoff)
=====================  ======================  ==========================================

The once-a-second poll reads two small indexes (``bans`` and ``callnodes``,
sorted by expiry) rather than scanning for ``ban:*`` and ``calls:*``: a scan
walks the whole keyspace, bindings included, so with 10 000 phones every
worker made some fifty round trips a second for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..security import Ban

__all__ = ["SharedState", "SYNC_SECONDS"]

log = logging.getLogger("sipyard.cluster")

SYNC_SECONDS = 1.0
_CALLS_TTL_MS = 5000


def _client(url: str) -> tuple[aioredis.Redis, str]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = dict(query).get("key_prefix") or "sipyard:"
    clean = urlunsplit(parts._replace(query=urlencode(
        [(k, v) for k, v in query if k != "key_prefix"])))
    client = aioredis.Redis.from_url(clean, decode_responses=True, socket_timeout=2.0,
                                     socket_connect_timeout=2.0, max_connections=4)
    return client, prefix


class SharedState:
    """Mirrors one process's guard, nonce secret, call counts and run state through Redis."""

    def __init__(self, ctx: Any, url: str) -> None:
        self.ctx = ctx  # sipyard.ops.OpsContext
        self.parts = ctx.parts
        self.redis, self.prefix = _client(url)
        self.node = secrets.randbits(16)
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._remote_bans: set[str] = set()
        self._published_calls: dict[str, int] | None = None
        self._refused_state: str | None = None

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Share the nonce secret (first process wins), then mirror in the background."""
        key = self.prefix + "cluster:secret"
        try:
            await self.redis.set(key, secrets.token_hex(32), nx=True)
            secret = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            log.warning("shared state: redis unavailable (%s); nonces stay per process", exc)
            secret = None
        if secret:
            self.parts.auth.share(bytes.fromhex(str(secret)), self.node)
        guard = self.parts.guard
        guard.listener = self
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        self.parts.guard.listener = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._pending):
            t.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.prefix + f"calls:{self.node}")
            await self.redis.zrem(self.prefix + "callnodes", str(self.node))
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    # -- GuardListener (called synchronously by the guard) ----------------------------------
    def failure(self, ip: str, now: float) -> None:
        self._spawn(self._failure(ip, now))

    def banned(self, ban: Ban) -> None:
        self._spawn(self._ban(ban))

    def unbanned(self, ip: str | None) -> None:
        self._spawn(self._unban(ip))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _failure(self, ip: str, now: float) -> None:
        guard = self.parts.guard
        key = self.prefix + "fail:" + ip
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, max(1, int(guard.window)))
            n = int((await pipe.execute())[0])
        except (RedisError, OSError) as exc:
            log.debug("shared failure count: %s", exc)
            return
        if guard.max_failures > 0 and n >= guard.max_failures and not guard.banned(ip, now):
            ban = Ban(ip, now + guard.ban_seconds, n)
            guard.install_ban(ban)
            log.warning("sipyard ban: src=%s failures=%d seconds=%d (counted by all workers)",
                        ip, n, int(guard.ban_seconds))
            await self._ban(ban)

    async def _ban(self, ban: Ban) -> None:
        at_ms = max(1, int(ban.until * 1000))
        with contextlib.suppress(RedisError, OSError):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.prefix + "ban:" + ban.address, f"{ban.until!r} {ban.failures}",
                         pxat=at_ms)
                pipe.zadd(self.prefix + "bans", {ban.address: at_ms})
                pipe.delete(self.prefix + "fail:" + ban.address)
                await pipe.execute()

    async def _unban(self, ip: str | None) -> None:
        index = self.prefix + "bans"
        try:
            ips = [ip] if ip is not None else [str(m) for m in await self.redis.zrange(index, 0, -1)]
            keys = [self.prefix + "ban:" + a for a in ips] + [self.prefix + "fail:" + a for a in ips]
            await self._each(keys, "delete")
            if ip is not None:
                await self.redis.zrem(index, ip)
            else:
                await self.redis.delete(index)
        except (RedisError, OSError) as exc:
            log.debug("shared unban: %s", exc)

    async def _each(self, keys: list[str], command: str) -> list[Any]:
        """``command`` on each key, pipelined, one key per command: keys of different
        hash slots never share a command (Redis Cluster, see sipyard.store.redis_keys)."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                getattr(pipe, command)(k)
            return list(await pipe.execute())

    # -- the background mirror --------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except (RedisError, OSError) as exc:
                log.debug("shared state sync: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shared state sync failed")
            await asyncio.sleep(SYNC_SECONDS)

    async def sync(self) -> None:
        await self._sync_bans()
        await self._sync_calls()
        await self._sync_runstate()

    async def _sync_bans(self) -> None:
        """The bans in force anywhere, from the ``bans`` index (ip by end time): one round
        trip whatever else the database holds, plus one for bans new to this process."""
        guard = self.parts.guard
        now = self.ctx.now()
        index = self.prefix + "bans"
        now_ms = int(now * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(index, "-inf", now_ms)
            pipe.zrangebyscore(index, now_ms + 1, "+inf", withscores=True)
            _, active = await pipe.execute()
        seen: set[str] = set()
        new: list[tuple[str, float]] = []
        for member, score in active:
            ip = str(member)
            seen.add(ip)
            if not guard.banned(ip, now):
                new.append((ip, float(score) / 1000.0))
        if new:  # the failure count that led to each ban, for `sipyard bans`
            values = await self._each([self.prefix + "ban:" + ip for ip, _ in new], "get")
            for (ip, until), v in zip(new, values, strict=True):
                until_s, _, fails_s = str(v or "").partition(" ")
                try:
                    until, fails = float(until_s) if v else until, int(fails_s or 0)
                except ValueError:
                    fails = 0
                if until > now:
                    guard.install_ban(Ban(ip, until, fails))
        for ip in self._remote_bans - seen:
            guard.drop_ban(ip)  # lifted elsewhere (sipyard unban on another host)
        self._remote_bans = seen

    async def _sync_calls(self) -> None:
        """Publish this process's per-line call counts, read the others' (the ``callnodes``
        index names who has any: no scan of the keyspace)."""
        calls = self.parts.calls
        mine = calls.local_counts()
        key = self.prefix + f"calls:{self.node}"
        index = self.prefix + "callnodes"
        now_ms = int(self.ctx.now() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            if mine:
                pipe.delete(key)
                pipe.hset(key, mapping={k: str(v) for k, v in mine.items()})
                pipe.pexpire(key, _CALLS_TTL_MS)
                pipe.zadd(index, {str(self.node): now_ms + _CALLS_TTL_MS})
            elif self._published_calls:
                pipe.delete(key)
                pipe.zrem(index, str(self.node))
            pipe.zremrangebyscore(index, "-inf", now_ms)
            pipe.zrange(index, 0, -1)
            nodes = (await pipe.execute())[-1]
        self._published_calls = mine
        others = [self.prefix + f"calls:{n}" for n in nodes if str(n) != str(self.node)]
        elsewhere: dict[str, int] = {}
        for counts in await self._each(others, "hgetall"):
            for line, n in (counts or {}).items():
                with contextlib.suppress(ValueError):
                    elsewhere[str(line)] = elsewhere.get(str(line), 0) + int(n)
        calls.elsewhere = elsewhere

    async def _sync_runstate(self) -> None:
        from ..ops import reload  # ops imports the transports; keep this module light

        got = await self.redis.get(self.prefix + "state:runstate")
        raw = None if got is None else str(got).strip()
        want = None if raw is None or raw.lower() in ("", "none") else raw
        if want != (self.parts.current.config.state or None) and want != self._refused_state:
            log.info("run state %s selected elsewhere; applying", want or "none")
            result = await reload(self.ctx, state=want)
            if not result.get("ok", True):
                self._refused_state = want  # once: no reload storm every second
                log.error("run state %s not applied: %s", want, result.get("error"))
