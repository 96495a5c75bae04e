"""The Redis key layout of the location store, and the Lua scripts that read it.

Why a module of its own: the layout is a contract with every other process
and host sharing the database (and with operators reading it), and Redis
Cluster puts a rule on it that the store's code must keep everywhere: **every
command, script and MULTI/EXEC touches the keys of one hash slot only**.
Each key that belongs to one AOR therefore carries the AOR as a hash tag
(``{aor}``): Redis hashes only the text between the first ``{`` and the
next ``}``, so all of an AOR's keys share one slot. The text up to the tag is
the same for all keys of an AOR, so even an AOR containing ``}`` (open
registration lets a phone pick its user part) hashes all its keys alike; a
``key_prefix`` that contains ``{…}`` puts everything in one slot, which is
still correct, merely not spread.

Layout (prefix ``sipyard:``; layout 2 since issue #14, see :data:`LAYOUT`)::

    sipyard:b:{<aor>}:<binding_id>              hash per binding, PEXPIREAT at its expiry
    sipyard:aor:{<aor>}                         set of the AOR's binding ids
    sipyard:end:{<aor>}:<binding_id>:<expires>  "this version's end was reported" marker
    sipyard:aors                                set of AORs (the index, for all/count)
    sipyard:state:<key>                         state values (run state, presence)
    sipyard:layout                              "2" once layout-1 keys were migrated

The index ``aors`` lives in a slot of its own, so it is never written in
the same MULTI as an AOR's keys. It is kept a superset of the AORs that have
bindings by ordering, not by atomicity: a writer adds the AOR after its EXEC
when the AOR had no binding before (and before it, so a crash in between
leaves no binding unlisted); a remover takes the AOR out and then checks the
AOR's id set, putting it back when a writer got in between
(``RedisStore._unindex``). Readers prune AORs that turn out empty.

Layout 1 (before issue #14) had no hash tags (``b:<aor>:<id>``,
``aor:<aor>``, ``end:<aor>:…``); :mod:`~sipyard.store.redis_store` moves
its bindings to layout 2 the first time a new version opens the database.

Scripts take the AOR's id set as their only declared key and build the
binding keys from it in the same slot; each handles one AOR, and a caller
with many AORs pipelines one call per AOR (each command single-slot, so a
cluster client can send each to its node). :data:`READ` also reads layout 1 (its
id set and binding prefix are passed in), for the migration.
"""

from __future__ import annotations

import hashlib

__all__ = ["Keys", "Script", "READ", "COUNT", "CLAIM", "UPDATE", "LAYOUT"]

#: the value of ``<prefix>layout`` once the database is in this layout
LAYOUT = "2"


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix", "index", "layout")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = prefix + "aors"
        self.layout = prefix + "layout"

    def ids(self, aor: str) -> str:
        return f"{self.prefix}aor:{{{aor}}}"

    def binding_prefix(self, aor: str) -> str:
        """``b:{aor}:`` — a binding's key is this plus its id."""
        return f"{self.prefix}b:{{{aor}}}:"

    def binding(self, aor: str, binding_id: str) -> str:
        return self.binding_prefix(aor) + binding_id

    def end_prefix(self, aor: str) -> str:
        return f"{self.prefix}end:{{{aor}}}:"

    def end(self, aor: str, binding_id: str, expires_at: float) -> str:
        return f"{self.end_prefix(aor)}{binding_id}:{expires_at!r}"

    def state(self, key: str) -> str:
        return self.prefix + "state:" + key

    # -- layout 1 (migration only) --------------------------------------------------
    def v1_ids(self, aor: str) -> str:
        return self.prefix + "aor:" + aor

    def v1_binding(self, aor: str, binding_id: str) -> str:
        return self.prefix + "b:" + aor + ":" + binding_id


class Script:
    __slots__ = ("src", "sha")

    def __init__(self, src: str) -> None:
        self.src = src
        self.sha = hashlib.sha1(src.encode()).hexdigest()


#: KEYS[1] = the AOR's id set; ARGV = binding key prefix, prune flag ("1": drop ids
#: whose hash expired). Returns the AOR's binding hashes (flat field/value lists).
READ = Script("""
local bprefix, prune = ARGV[1], ARGV[2] == '1'
local hashes = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', bprefix .. id)
  if #h > 0 then
    hashes[#hashes + 1] = h
  elseif prune then
    redis.call('SREM', KEYS[1], id)
  end
end
return hashes
""")

#: KEYS[1] = the AOR's id set; ARGV = binding key prefix, now. Unexpired bindings.
COUNT = Script("""
local bprefix, now = ARGV[1], tonumber(ARGV[2])
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local exp = redis.call('HGET', bprefix .. id, 'expires_at')
  if exp and tonumber(exp) > now then n = n + 1 end
end
return n
""")

#: KEYS[1] = the AOR's id set; ARGV = binding key prefix, end marker prefix, marker
#: ttl (ms), then (binding id, expires_at) pairs. Claims each version's end: won when
#: its hash is gone or still that version, and the marker is new. Returns one 0/1 per
#: pair, then the number of ids left in the set.
CLAIM = Script("""
local bprefix, eprefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local id, exp = ARGV[i], ARGV[i + 1]
  local bkey = bprefix .. id
  local cur = redis.call('HGET', bkey, 'expires_at')
  local won = 0
  if (not cur or cur == exp)
      and redis.call('SET', eprefix .. id .. ':' .. exp, '1', 'NX', 'PX', ttl) then
    won = 1
    if cur then redis.call('DEL', bkey) end
    redis.call('SREM', KEYS[1], id)
  end
  out[#out + 1] = won
end
out[#out + 1] = redis.call('SCARD', KEYS[1])
return out
""")

#: KEYS[1] = the AOR's id set. One optimistic write of an AOR in one round trip (what
#: WATCH / read / MULTI … EXEC took three for). ARGV: binding key prefix, end marker
#: prefix; n, then n (id, version) pairs: the bindings the caller's decision was based
#: on, with their field ``v`` ("" if absent; ids whose hash is gone count as absent); then r, r × (id, end
#: marker suffix or "", marker PXAT) to remove; then p, p × (id, PEXPIREAT, 2k, k field
#: /value pairs, with ``v``) to put; then the id set's PEXPIREAT ("0": delete it). Returns {1} when
#: the AOR was as expected and the write is done, else {0, the AOR's binding hashes}
#: (so the caller decides again on fresh data without another read).
UPDATE = Script("""
local bprefix, eprefix = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local want = {}
local i = 4
for _ = 1, n do
  want[ARGV[i]] = ARGV[i + 1]
  i = i + 2
end
local ids = redis.call('SMEMBERS', KEYS[1])
local seen, same = 0, true
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', bprefix .. id, 'aor', 'v')
  if h[1] then
    if want[id] ~= (h[2] or '') then
      same = false
      break
    end
    seen = seen + 1
  end
end
if not same or seen ~= n then
  local hashes = {}
  for _, id in ipairs(ids) do
    local h = redis.call('HGETALL', bprefix .. id)
    if #h > 0 then hashes[#hashes + 1] = h end
  end
  return {0, hashes}
end
local r = tonumber(ARGV[i])
i = i + 1
for _ = 1, r do
  local id, marker = ARGV[i], ARGV[i + 1]
  redis.call('DEL', bprefix .. id)
  redis.call('SREM', KEYS[1], id)
  if marker ~= '' then
    redis.call('SET', eprefix .. marker, '1', 'PXAT', ARGV[i + 2])
  end
  i = i + 3
end
local p = tonumber(ARGV[i])
i = i + 1
for _ = 1, p do
  local id, at, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = bprefix .. id
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + nf))
  redis.call('PEXPIREAT', key, at)
  redis.call('SADD', KEYS[1], id)
  i = i + 3 + nf
end
if ARGV[i] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[i])
end
return {1}
""")
