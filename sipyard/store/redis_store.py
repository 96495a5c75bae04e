"""Redis location store: several workers or hosts share one set of bindings.

Keys: see :mod:`sipyard.store.redis_keys` (one hash slot per AOR, so a Redis
Cluster can hold them; the index of AORs is maintained outside the AOR's
transactions for the same reason). A database still in the layout of
earlier versions is migrated by :meth:`RedisStore.open`.

Atomicity. :meth:`update` is optimistic and takes one round trip when nothing
raced it: the registrar's decision is taken on the bindings this process last
wrote or read, and :data:`~sipyard.store.redis_keys.UPDATE` (a Lua script,
atomic in redis) writes the delta only if the AOR still holds exactly those
bindings (ids and versions); otherwise it returns what the AOR holds and the
decision is taken again on that. Updates of one AOR inside a process are
serialised by a local lock first, so retries only happen between processes.
(Before issue #14's scale-out measurements this was WATCH / read / MULTI …
EXEC: three round trips, five for a new AOR with its index entries, which
pipelined around the script now cost none.)

Expiry. Redis deletes expired hashes silently, so ``release`` events need a
source. This store keeps a *known set*: the bindings it wrote, plus everything
present at :meth:`open` (a restarted single worker still reports bindings
registered before the restart). :meth:`expire` takes the known bindings
whose time has come and, in one Lua call per AOR (pipelined), *claims* each
one: a claim succeeds
if the binding's hash is gone or still holds that same version, and a
``SET … NX`` on its ``end:`` marker is won. So of several workers knowing a
binding exactly one reports it; a version that was refreshed by another
worker is not reported (that worker knows the newer one); an explicit remove
sets the marker itself, so a removal is never also reported as an expiry.
Best effort: a binding written by a worker that then died is reported only
by workers that loaded it at their open(). The alternative is redis keyspace
notifications (``notify-keyspace-events Ex`` and a subscriber on
``__keyevent@<db>__:expired``), which carry only the key name: the hash is
gone by then, so the event would need a shadow copy of every binding, and a
notification is lost while no subscriber is connected.

Durability: :meth:`update` returns once ``EXEC`` is done, i.e. every other
client sees the write; whether it survives a *redis* restart is redis'
configuration (``appendonly yes`` with ``appendfsync everysec`` or ``always``).

Errors: connection refused, timeouts (2 s socket timeout, one reconnect) and
server errors raise :class:`StoreError`. Strings go through UTF-8 with
``surrogatepass``, so every ``str`` round-trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, WatchError

from .base import Binding, LocationStore, StoreError, UpdateFn, normalize_update, sort_key
from .cache import BindingCache, KeyedLocks
from .redis_keys import CLAIM, COUNT, LAYOUT, READ, UPDATE, Keys, Script

__all__ = ["RedisStore"]

SOCKET_TIMEOUT = 2.0
#: Connections to redis per process (a blocking pool: callers wait, never fail).
MAX_CONNECTIONS = 32
#: optimistic retries of one update before giving up with StoreError
MAX_ATTEMPTS = 64
#: how long an ``end:`` marker outlives the binding version it settles (ms)
END_MARKER_MS = 600_000
#: AORs per pipeline (one script call each) in all()/count()/expire()/open()
CHUNK = 256

def _encode(b: Binding) -> dict[str, str]:
    d = {
        "aor": b.aor, "binding_id": b.binding_id, "contact": b.contact, "params": b.params,
        "expires_at": repr(b.expires_at), "registered_at": repr(b.registered_at),
        "call_id": b.call_id, "cseq": str(b.cseq), "source_ip": b.source_ip,
        "source_port": str(b.source_port), "transport": b.transport,
        "path": json.dumps(b.path, ensure_ascii=False) if b.path else "",
        "user_agent": b.user_agent,
    }
    if b.q is not None:
        d["q"] = repr(b.q)
    if b.conn_id is not None:
        d["conn_id"] = b.conn_id
    if b.instance is not None:
        d["instance"] = b.instance
    if b.reg_id is not None:
        d["reg_id"] = str(b.reg_id)
    return d


def _decode(flat: Sequence[str]) -> Binding:
    d: dict[str, str] = {}
    try:
        d = dict(zip(flat[::2], flat[1::2], strict=True))
        q, path, reg_id = d.get("q"), d["path"], d.get("reg_id")
        return Binding(
            d["aor"], d["binding_id"], d["contact"], d["params"],
            float(q) if q is not None else None, float(d["expires_at"]),
            float(d["registered_at"]), d["call_id"], int(d["cseq"]), d["source_ip"],
            int(d["source_port"]), d["transport"], d.get("conn_id"),
            tuple(json.loads(path)) if path else (), d["user_agent"], d.get("instance"),
            int(reg_id) if reg_id is not None else None)
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"redis: corrupt binding hash {d.get('aor')!r}: {exc}") from exc


def _version(fields: dict[str, str]) -> str:
    """A binding version's fingerprint (its hash field ``v``): equal only for equal
    content, so a write decided on a binding that another process rewrote is refused
    (and one decided on an identical rewrite is exactly as right as it was)."""
    blob = "\x00".join(f"{k}\x01{v}" for k, v in fields.items() if k != "v")
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _with_versions(hashes: Sequence[Sequence[str]]) -> dict[str, tuple[Binding, str]]:
    """Bindings read from redis with their ``v`` ("" for one written before it existed)."""
    out: dict[str, tuple[Binding, str]] = {}
    for flat in hashes:
        b = _decode(flat)
        version = ""
        for i in range(0, len(flat) - 1, 2):
            if flat[i] == "v":
                version = flat[i + 1]
                break
        out[b.binding_id] = (b, version)
    return out


def _same(a: dict[str, tuple[Binding, str]], b: dict[str, tuple[Binding, str]]) -> bool:
    return a.keys() == b.keys() and all(a[k][1] == b[k][1] for k in a)


def _ms(t: float) -> int:
    return int(t * 1000)


class RedisStore(LocationStore):
    """Bindings in redis (see the module docstring)."""

    needs_task = True  # redis-py's reads use asyncio.timeout, which needs current_task()

    def __init__(self, url: str, *, key_prefix: str | None = None,
                 track_expiry: bool = True) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = dict(query).get("key_prefix")
        self.url = urlunsplit(parts._replace(
            query=urlencode([(k, v) for k, v in query if k != "key_prefix"])))
        self.prefix = key_prefix if key_prefix is not None else prefix or "sipyard:"
        self.keys = Keys(self.prefix)
        self.track_expiry = track_expiry
        self._client: aioredis.Redis | None = None
        self._known = BindingCache()
        self._locks = KeyedLocks()
        self._expire_lock = asyncio.Lock()
        #: optimistic transactions retried because another process won (tests, metrics)
        self.conflicts = 0
        #: bindings moved from the layout of earlier versions by open()
        self.migrated = 0

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            raise StoreError("store already open")
        try:
            # A blocking pool: a burst of requests waits for a free connection
            # (bounded by the socket timeout) instead of failing with "Too many
            # connections", and the number of sockets to redis stays bounded.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT,
                decode_responses=True, encoding_errors="surrogatepass",
                socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1))
            client = aioredis.Redis(connection_pool=pool)
        except ValueError as exc:
            raise StoreError(f"redis: bad URL {self.url!r}: {exc}") from exc
        self._client = client
        try:
            await self._call(client.ping())
            await self._migrate()
            known = BindingCache()
            if self.track_expiry:
                known.load(await self.all(time.time()))
            self._known = known
        except BaseException:
            self._client = None
            await client.aclose()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):  # a dead server is closed too
                await client.aclose()

    # -- reads -----------------------------------------------------------------

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        keys = self.keys
        raw = await self._eval(self._redis(), READ, [keys.ids(aor)],
                               [keys.binding_prefix(aor), "1"])
        return self._visible(raw, now)

    async def all(self, now: float) -> list[Binding]:
        out: list[Binding] = []
        keys = self.keys
        for chunk in await self._aor_chunks():
            raws = await self._eval_many(READ, [
                ([keys.ids(aor)], [keys.binding_prefix(aor), "1"]) for aor in chunk])
            empty = [aor for aor, raw in zip(chunk, raws, strict=True) if not raw]
            for raw in raws:
                out.extend(self._visible(raw, now))
            if empty:
                await self._unindex(empty)
        out.sort(key=sort_key)
        return out

    async def count(self, now: float) -> int:
        n = 0
        keys = self.keys
        for chunk in await self._aor_chunks():
            n += sum(int(x) for x in await self._eval_many(COUNT, [
                ([keys.ids(aor)], [keys.binding_prefix(aor), repr(now)]) for aor in chunk]))
        return n

    async def get_state(self, key: str) -> str | None:
        client = self._redis()
        value: str | None = await self._call(client.get(self.keys.state(key)))
        return value

    async def set_state(self, key: str, value: str | None) -> None:
        client = self._redis()
        name = self.keys.state(key)
        await self._call(client.delete(name) if value is None else client.set(name, value))

    # -- writes ----------------------------------------------------------------

    async def update(self, aor: str, now: float, fn: UpdateFn) -> list[Binding]:
        self._redis()
        await self._locks.acquire(aor)
        try:
            return (await self._transact(aor, now, fn))[1]
        finally:
            self._locks.release(aor)

    async def remove_aor(self, aor: str) -> list[Binding]:
        self._redis()
        await self._locks.acquire(aor)
        try:
            removed, _ = await self._transact(
                aor, float("-inf"), lambda cur: ([], [b.binding_id for b in cur]))
            return removed
        finally:
            self._locks.release(aor)

    async def _transact(self, aor: str, now: float,
                        fn: UpdateFn) -> tuple[list[Binding], list[Binding]]:
        """Decide on what the AOR holds, write with :data:`UPDATE`, again on fresh data
        until that lands.

        The first decision is taken on the bindings this process last wrote or read
        (``_known``), so a phone refreshing its registration costs one round trip; when
        another process wrote the AOR since, the script refuses and returns the AOR as it
        is, and ``fn`` runs again on that. A decision to change nothing is only trusted on
        data just read. Returns (the bindings fn saw, the AOR's unexpired bindings after).
        """
        keys = self.keys
        setkey = keys.ids(aor)
        bprefix = keys.binding_prefix(aor)
        client = self._redis()
        known = self._known.get(aor) if self.track_expiry else None
        listed = bool(known)
        # id -> (binding, its version as redis holds it): a guess from known, or read
        existing: dict[str, tuple[Binding, str]] | None = None
        read = False
        if known is not None:  # what this process knows (for a new AOR: nothing)
            wall_ms = _ms(time.time())
            existing = {b.binding_id: (b, _version(_encode(b))) for b in known
                        if _ms(b.expires_at) > wall_ms}
        guess: dict[str, tuple[Binding, str]] | None = None
        current: list[Binding] = []
        for attempt in range(MAX_ATTEMPTS):
            if existing is None:
                raw = await self._eval(client, READ, [setkey], [bprefix, "0"])
                existing, read = _with_versions(raw), True
                if guess is not None and _same(existing, guess):
                    return current, current  # the guess that changed nothing was right
            current = sorted((b for b, _ in existing.values() if b.expires_at > now),
                             key=sort_key)
            puts, removes = normalize_update(aor, fn(list(current)))
            if not puts and not removes:
                if read:
                    return current, current
                guess, existing = existing, None  # a guess may be stale: read, then see
                continue
            final = {k: b for k, (b, _) in existing.items()}
            for rid in removes:
                final.pop(rid, None)
            final.update((b.binding_id, b) for b in puts)
            args = self._update_args(aor, existing, puts, removes, final)
            fresh = not existing and bool(final)
            result = await self._update(aor, setkey, args, before=not listed, after=fresh)
            if int(result[0]) == 1:
                if not final:
                    with contextlib.suppress(StoreError):  # readers prune it otherwise
                        await self._unindex([aor])
                if self.track_expiry:
                    self._known.apply(aor, puts, removes)
                after = sorted((b for b in final.values() if b.expires_at > now), key=sort_key)
                return current, after
            # another process wrote the AOR since: decide again on what it holds now
            existing, read = _with_versions(result[1]), True
            listed = bool(existing)  # whoever wrote them listed the AOR
            if self.track_expiry:
                old = self._known.get(aor)
                self._known.apply(aor, [b for b, _ in existing.values()],
                                  [b.binding_id for b in old if b.binding_id not in existing])
            self.conflicts += 1
            if attempt:
                await asyncio.sleep(random.random() * min(0.001 * attempt, 0.02))
        raise StoreError(f"redis: update of {aor!r} lost {MAX_ATTEMPTS} races in a row")

    def _update_args(self, aor: str, existing: dict[str, tuple[Binding, str]],
                     puts: Sequence[Binding], removes: Sequence[str],
                     final: dict[str, Binding]) -> list[str]:
        """:data:`UPDATE`'s arguments (see there)."""
        keys = self.keys
        args = [keys.binding_prefix(aor), keys.end_prefix(aor), str(len(existing))]
        for bid, (_, version) in existing.items():
            args += (bid, version)
        args.append(str(len(removes)))
        wall_ms = _ms(time.time())
        for rid in removes:
            seen = existing.get(rid)
            if seen is None:
                args += (rid, "", "0")
            else:  # settle this version: no worker reports it as expired
                old = seen[0]
                args += (rid, f"{old.binding_id}:{old.expires_at!r}",
                         str(max(_ms(old.expires_at), wall_ms) + END_MARKER_MS))
        args.append(str(len(puts)))
        for b in puts:
            fields = _encode(b)
            fields["v"] = _version(fields)
            args += (b.binding_id, str(_ms(b.expires_at)), str(2 * len(fields)))
            for kv in fields.items():
                args += kv
        args.append(str(max(_ms(b.expires_at) for b in final.values())) if final else "0")
        return args

    async def _update(self, aor: str, setkey: str, args: list[str], *, before: bool,
                      after: bool) -> Any:
        """One round trip: the index entry first when the AOR may be new (so a crash after
        the write leaves no binding unlisted), :data:`UPDATE`, the index entry again when
        it was new (a remover that looked before the write cannot have undone it)."""
        index = self.keys.index

        def fill(pipe: Any) -> None:
            if before:
                pipe.sadd(index, aor)
            pipe.evalsha(UPDATE.sha, 1, setkey, *args)
            if after:
                pipe.sadd(index, aor)

        results = await self._pipeline(UPDATE, fill)
        return results[1 if before else 0]

    def _queue_writes(self, pipe: Any, aor: str, existing: dict[str, Binding],
                      puts: Iterable[Binding], removes: Iterable[str],
                      final: dict[str, Binding]) -> None:
        """The MULTI block of one update: keys of ``aor``'s slot only."""
        keys = self.keys
        setkey = keys.ids(aor)
        bprefix = keys.binding_prefix(aor)
        pipe.multi()
        for rid in removes:
            pipe.delete(bprefix + rid)
            pipe.srem(setkey, rid)
            old = existing.get(rid)
            if old is not None:  # settle this version: no worker reports it as expired
                pipe.set(keys.end(aor, old.binding_id, old.expires_at), "1",
                         pxat=max(_ms(old.expires_at), _ms(time.time())) + END_MARKER_MS)
        for b in puts:
            key = bprefix + b.binding_id
            pipe.delete(key)  # fields absent from the new version must go
            pipe.hset(key, mapping=_encode(b))
            pipe.pexpireat(key, _ms(b.expires_at))
            pipe.sadd(setkey, b.binding_id)
        # Always write the id set: that is what makes concurrent EXECs of this AOR abort.
        if final:
            pipe.pexpireat(setkey, max(_ms(b.expires_at) for b in final.values()))
        else:
            pipe.delete(setkey)

    async def _unindex(self, aors: Sequence[str]) -> None:
        """Take AORs without bindings out of the index, safely against a concurrent writer.

        Remove first, then look at each AOR's id set and put back those that
        have one again: a writer whose EXEC came before the look is seen; one
        whose EXEC comes after adds the AOR itself (``_transact``: ``fresh``).
        """
        client = self._redis()
        keys = self.keys
        try:
            await client.srem(keys.index, *aors)
            async with client.pipeline(transaction=False) as pipe:
                for aor in aors:
                    pipe.exists(keys.ids(aor))
                alive = await pipe.execute()
            back = [aor for aor, n in zip(aors, alive, strict=True) if int(n)]
            if back:
                await client.sadd(keys.index, *back)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def expire(self, now: float) -> list[Binding]:
        self._redis()
        keys = self.keys
        async with self._expire_lock:
            due = self._known.expired(now)
            by_aor: dict[str, list[Binding]] = {}
            for b in due:
                by_aor.setdefault(b.aor, []).append(b)
            groups = list(by_aor.items())
            won: list[Binding] = []
            settled: list[Binding] = []
            for i in range(0, len(groups), CHUNK):
                chunk = groups[i:i + CHUNK]
                calls = []
                for aor, bs in chunk:
                    args = [keys.binding_prefix(aor), keys.end_prefix(aor), str(END_MARKER_MS)]
                    for b in bs:
                        args += (b.binding_id, repr(b.expires_at))
                    calls.append(([keys.ids(aor)], args))
                try:
                    results = await self._eval_many(CLAIM, calls)
                except StoreError:
                    if not settled:
                        raise
                    break  # report what was claimed; the rest is retried next tick
                emptied = []
                for (aor, bs), res in zip(chunk, results, strict=True):
                    won.extend(b for b, r in zip(bs, res[:-1], strict=True) if int(r) == 1)
                    settled.extend(bs)
                    if int(res[-1]) == 0:
                        emptied.append(aor)
                if emptied:
                    with contextlib.suppress(StoreError):  # all() prunes it later
                        await self._unindex(emptied)
            self._known.discard(settled)
            return won

    # -- layout 1 → 2 ------------------------------------------------------------

    async def _migrate(self) -> None:
        """Move bindings written by versions before the hash-tag layout (once per database).

        Each AOR's old bindings are rewritten in the new layout in one MULTI
        (WATCHing the new id set: bindings a new process already wrote win)
        and the old keys deleted. Expired ones are dropped. Idempotent: two
        processes opening at once both end with the same data.
        """
        client = self._redis()
        keys = self.keys
        if await self._call(client.get(keys.layout)) == LAYOUT:
            return
        now = time.time()
        for chunk in await self._aor_chunks():
            for aor in chunk:
                old_ids = keys.v1_ids(aor)
                if not await self._call(client.exists(old_ids)):
                    continue
                # plain commands, one key each: layout 1 never was one slot per AOR
                hashes = [await self._call(client.hgetall(keys.v1_binding(aor, bid)))
                          for bid in await self._call(client.smembers(old_ids))]
                old = [b for b in (_decode([x for kv in h.items() for x in kv])
                                   for h in hashes if h) if b.expires_at > now]
                await self._move_v1(aor, old)
        await self._call(client.set(keys.layout, LAYOUT))

    async def _move_v1(self, aor: str, old: list[Binding]) -> None:
        client = self._redis()
        keys = self.keys
        setkey = keys.ids(aor)
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(setkey)
                if old and not await pipe.exists(setkey):
                    final = {b.binding_id: b for b in old}
                    self._queue_writes(pipe, aor, {}, old, (), final)
                    await pipe.execute()
                    self.migrated += len(old)
            except WatchError:
                pass  # a new process wrote this AOR meanwhile: its bindings are newer
            except (RedisError, OSError) as exc:
                raise StoreError(f"redis: {exc}") from exc
        ids = await self._call(client.smembers(keys.v1_ids(aor)))
        await self._call(client.delete(keys.v1_ids(aor)))
        for bid in ids:
            await self._call(client.delete(keys.v1_binding(aor, bid)))

    # -- plumbing --------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        client = self._client
        if client is None:
            raise StoreError("redis: store is not open")
        return client

    def _visible(self, hashes: Sequence[Sequence[str]], now: float) -> list[Binding]:
        out = [b for b in map(_decode, hashes) if b.expires_at > now]
        out.sort(key=sort_key)
        return out

    async def _aor_chunks(self) -> list[list[str]]:
        client = self._redis()
        seen: set[str] = set()
        try:
            async for aor in client.sscan_iter(self.keys.index, count=1000):
                seen.add(aor)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        aors = sorted(seen)
        return [aors[i:i + CHUNK] for i in range(0, len(aors), CHUNK)]

    async def _eval(self, client: Any, script: Script, keys: list[str], args: list[str]) -> Any:
        """EVALSHA, falling back to EVAL when the server does not know the script yet."""
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(script.src, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def _eval_many(self, script: Script,
                         calls: Sequence[tuple[list[str], list[str]]]) -> list[Any]:
        """One script call per AOR, pipelined (not a transaction: each call is one slot)."""
        def fill(pipe: Any) -> None:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)

        return await self._pipeline(script, fill)

    async def _pipeline(self, script: Script, fill: Callable[[Any], None]) -> list[Any]:
        """A pipeline (not a transaction) that ``fill`` queues and that calls ``script``:
        sent again once, after loading it, when the server does not know it (redis
        restarted or flushed its scripts)."""
        client = self._redis()
        for attempt in (0, 1):
            try:
                async with client.pipeline(transaction=False) as pipe:
                    fill(pipe)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise StoreError("redis: script not loaded") from None
                await self._call(client.script_load(script.src))
            except (RedisError, OSError) as exc:
                raise StoreError(f"redis: {exc}") from exc
        raise AssertionError("unreachable")

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
