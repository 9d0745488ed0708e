-- Shared by every script: the loader prepends it to each script's body.
-- KEYS[1] = the holds set, KEYS[2] = the entry (or account) hash.
-- ARGV[1..6] = prefix, now, retain seconds, now's day, week and month period ids; each
-- script's own arguments start at ARGV[7].
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local RETAIN = tonumber(ARGV[3])
local PERIODS = {ARGV[4], ARGV[5], ARGV[6]}
local HOLDS = KEYS[1]
-- Redis drops finished keys this long after the callers' clocks forget them (skew room).
local GRACE = 60

local function account_key(name) return P .. 'a:' .. name end
local function rolling_key(name, seconds) return P .. 'r:' .. seconds .. ':' .. name end

local function keep_until(key, at)
  local ttl = math.ceil(at - NOW) + GRACE
  if ttl < GRACE then ttl = GRACE end
  redis.call('EXPIRE', key, ttl)
end

local function decode(raw)
  local spec = {}
  for i, p in ipairs(cjson.decode(raw)) do
    local budgets = {}
    for j, b in ipairs(p[2]) do
      budgets[j] = {limit_raw = b[1], limit = tonumber(b[1]), ci = b[2], seconds = b[3],
                    width = b[4], pid = b[5], marks = b[6]}
    end
    spec[i] = {name = p[1], budgets = budgets}
  end
  return spec
end

local function held_of(name)
  return tonumber(redis.call('HGET', account_key(name), 'held')) or 0
end

-- An entry is one msgpack string (a hash with a field over 64 bytes would lose Redis's
-- compact encoding and cost ~4x the memory): kind ('h' hold, 'c' charge), state, held,
-- amount, at and ex (the callers' time strings: spend date, hold expiry), fg (when the
-- key is forgotten; false while held), sp (the charges as JSON) and the day, week and
-- month period ids the spend landed in.
local function save(ek, e)
  redis.call('SET', ek, cmsgpack.pack({e.kind, e.state, e.held, e.amount, e.at, e.ex, e.fg,
                                       e.sp, e.periods[1], e.periods[2], e.periods[3]}))
end

local function unpack_entry(raw)
  local r = cmsgpack.unpack(raw)
  return {kind = r[1], state = r[2], held = r[3], amount = r[4], at = r[5], ex = r[6],
          fg = r[7], sp = r[8], periods = {r[9], r[10], r[11]}}
end

-- Finish an entry at time `at`: remembered for RETAIN more, then forgotten.
local function finish(ek, e, at)
  e.fg = at + RETAIN
  save(ek, e)
  keep_until(ek, e.fg)
end

-- Expire every hold due by NOW: its amount stops counting on all of its accounts.
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', HOLDS, '-inf', ARGV[2])
  local expired = 0
  for _, ek in ipairs(due) do
    local raw = redis.call('GET', ek)
    local e = raw and unpack_entry(raw)
    if e and e.state == 'held' then
      for _, payer in ipairs(cjson.decode(e.sp)) do
        redis.call('HINCRBY', account_key(payer[1]), 'held', 0 - e.held)  -- not -x: Lua renders -0 as "-0", which HINCRBY refuses (a $0 hold)
      end
      e.state = 'expired'
      finish(ek, e, tonumber(e.ex))
      expired = expired + 1
    end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', HOLDS, '-inf', ARGV[2]) end
  return expired
end

local function load(ek)
  local raw = redis.call('GET', ek)
  if not raw then return nil end
  local e = unpack_entry(raw)
  if e.fg and e.fg <= NOW then
    redis.call('DEL', ek)
    return nil
  end
  e.spec = decode(e.sp)
  return e
end

local function unhold(ek, entry)
  for _, payer in ipairs(entry.spec) do
    redis.call('HINCRBY', account_key(payer.name), 'held', 0 - entry.held)  -- never -0 (see sweep)
  end
  redis.call('ZREM', HOLDS, ek)
end

-- Rolling spend of the window after dropping buckets that left it; 0 when none.
local function rolling_total(name, seconds, width)
  local rk = rolling_key(name, seconds)
  local r = redis.call('HMGET', rk, 't', 'lo', 'hi')
  if not r[1] then return 0 end
  local total, lo, hi = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  -- a bucket counts while any part of it is inside (NOW - seconds, NOW]
  local horizon = NOW - seconds - width
  if lo > horizon then return total end
  if hi <= horizon then
    redis.call('DEL', rk)
    return 0
  end
  while lo <= horizon do
    local nanos = redis.call('HGET', rk, lo)
    if nanos then
      total = total - tonumber(nanos)
      redis.call('HDEL', rk, lo)
    end
    lo = lo + width
  end
  redis.call('HSET', rk, 't', total, 'lo', lo)
  return total
end

local function rolling_add(name, seconds, width, at, delta)
  local rk = rolling_key(name, seconds)
  rolling_total(name, seconds, width)
  local start = at - math.fmod(at, width)
  if redis.call('HEXISTS', rk, start) == 1 then
    redis.call('HINCRBY', rk, start, delta)
    redis.call('HINCRBY', rk, 't', delta)
  elseif delta > 0 and start > NOW - seconds - width then
    local r = redis.call('HMGET', rk, 'lo', 'hi')
    local lo, hi = tonumber(r[1]), tonumber(r[2])
    if not lo or start < lo then lo = start end
    if not hi or start > hi then hi = start end
    redis.call('HSET', rk, start, delta, 'lo', lo, 'hi', hi)
    redis.call('HINCRBY', rk, 't', delta)
    keep_until(rk, hi + seconds + width)
  end
  -- otherwise the bucket has aged out: the correction falls outside the window
end

-- Seconds until at least `need` nanos of rolling spend have aged out, or -1 (never).
local function rolling_retry(name, b, need)
  local rk = rolling_key(name, b.seconds)
  local r = redis.call('HMGET', rk, 'lo', 'hi')
  if not r[1] then return -1 end
  local freed = 0
  for start = tonumber(r[1]), tonumber(r[2]), b.width do
    local nanos = redis.call('HGET', rk, start)
    if nanos then
      freed = freed + tonumber(nanos)
      if freed >= need then
        return math.max(1, math.ceil(start + b.width + b.seconds - NOW))
      end
    end
  end
  return -1
end

local function spent_in(name, b)
  local ci = b.ci
  if ci > 0 then
    local r = redis.call('HMGET', account_key(name), 'p' .. ci, 'n' .. ci)
    -- Period ids sort in time order. A stored period later than the caller's is the
    -- current one (the caller's clock lags another replica's): its spend counts, so a
    -- lagging replica never sees an exhausted budget as empty. An earlier one is closed.
    if r[1] and r[1] >= PERIODS[ci] then return tonumber(r[2]) end
    return 0
  elseif ci == 0 then
    return tonumber(redis.call('HGET', account_key(name), 'total')) or 0
  end
  return rolling_total(name, b.seconds, b.width)
end

-- What to reserve, or nil and the failure reply of the first account and budget (in
-- order) that cannot pay. Without a floor: `amount` when every budget can pay it. With a
-- floor: `amount` if it fits, else the most every budget of every account can still pay,
-- if that is at least the floor (the failure then names the first that cannot pay it).
local function check(spec, amount, floor)
  local least = amount
  for pi, payer in ipairs(spec) do
    if #payer.budgets > 0 then
      local held = held_of(payer.name)
      for bi, b in ipairs(payer.budgets) do
        local used = spent_in(payer.name, b) + held
        local left = b.limit - used
        if left < least then
          if floor == nil or left < floor then
            local need = floor or amount
            local retry = -1
            if b.ci < 0 and need <= b.limit then
              retry = rolling_retry(payer.name, b, used + need - b.limit)
            end
            return nil, {'!', 'exceeded', pi, bi, used, retry}
          end
          least = left
        end
      end
    end
  end
  return least, nil
end

-- Add delta to the calendar periods the spend landed in (dated by at_periods).
local function land(ak, delta, at_periods)
  local r = redis.call('HMGET', ak, 'p1', 'p2', 'p3')
  for i = 1, 3 do
    local period = at_periods[i]
    if r[i] == period or (period == PERIODS[i] and r[i] and r[i] > period) then
      -- the stored period, or a later one: the caller's clock lags another replica's,
      -- and its spend counts in the period the account has already moved to
      redis.call('HINCRBY', ak, 'n' .. i, delta)
    elseif delta > 0 and period == PERIODS[i] then
      -- Period ids sort in time order: the account enters the caller's (later) period
      redis.call('HSET', ak, 'p' .. i, period, 'n' .. i, delta)
    end
    -- otherwise the spend's period has closed: a correction to it is dropped
  end
end

local function level(marks, spent)
  local n = 0
  if spent > 0 then
    for _, mark in ipairs(marks) do
      if spent < mark then break end
      n = n + 1
    end
  end
  return n
end

local function crossings(name, ak, b, before, after, out)
  local period = b.ci > 0 and PERIODS[b.ci] or b.pid
  local fired = 0
  local akey = 'al:' .. b.limit_raw .. ':' .. b.ci .. ':' .. b.seconds  -- per budget value
  local stored = redis.call('HGET', ak, akey)
  if stored then
    local sep = string.find(stored, '|', 1, true)
    if string.sub(stored, sep + 1) == period then
      fired = tonumber(string.sub(stored, 1, sep - 1))
    end
  end
  if b.ci < 0 then
    -- no period ends a rolling window: a threshold re-arms once spend drops below it
    fired = math.min(fired, level(b.marks, before))
  end
  local reached = level(b.marks, after)
  if reached <= fired then return end
  redis.call('HSET', ak, akey, reached .. '|' .. period)
  for i = fired + 1, reached do
    out[#out + 1] = {name, b.limit_raw, b.ci, b.seconds, i, after, period}
  end
end

-- Add delta spend dated `at` (periods at_periods) to every account; appends crossings.
local function record(spec, at, at_periods, delta, crossed)
  if delta == 0 then return end
  for _, payer in ipairs(spec) do
    local name, budgets = payer.name, payer.budgets
    local ak = account_key(name)
    local before = {}
    if delta > 0 then
      for i, b in ipairs(budgets) do
        if b.ci < 0 and #b.marks > 0 then before[i] = spent_in(name, b) end
      end
    end
    redis.call('HINCRBY', ak, 'total', delta)
    land(ak, delta, at_periods)
    local seen = {}
    for _, b in ipairs(budgets) do
      if b.ci < 0 and not seen[b.seconds] then
        seen[b.seconds] = true
        rolling_add(name, b.seconds, b.width, at, delta)
      end
    end
    if delta > 0 then
      for i, b in ipairs(budgets) do
        if #b.marks > 0 then
          local after = spent_in(name, b)
          if after >= b.marks[1] then crossings(name, ak, b, before[i] or 0, after, crossed) end
        end
      end
    end
  end
end

-- Each account's least remaining budget (-1: no budgets), as balance() reports it.
-- Replies avoid Lua false: a RESP3 connection would read it as a boolean, not nil.
local function remaining(spec)
  local out = {}
  for i, payer in ipairs(spec) do
    if #payer.budgets == 0 then
      out[i] = -1
    else
      local left
      for _, b in ipairs(payer.budgets) do
        local l = b.limit - spent_in(payer.name, b)
        if not left or l < left then left = l end
      end
      left = left - held_of(payer.name)
      out[i] = left > 0 and left or 0
    end
  end
  return out
end

local function unchanged(entry)
  return {'unchanged', entry.state, entry.amount, 0, remaining(entry.spec), {}}
end
