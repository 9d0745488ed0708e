-- Hold: check every account's budgets and reserve the amount on all of them, or none.
-- ARGV[7] amount, [8] expiry, [9] charges (JSON), [10] floor ('' for none: all or nothing)
sweep()
local e = load(KEYS[2])
if e then
  if e.kind ~= 'h' then return {'!', 'charge'} end
  local accounts = {}
  for i, payer in ipairs(e.spec) do accounts[i] = payer.name end
  return {'replay', e.state, e.held, e.ex, accounts}
end
local spec = decode(ARGV[9])
local amount, failure = check(spec, tonumber(ARGV[7]), tonumber(ARGV[10]))
if failure then return failure end
save(KEYS[2], {kind = 'h', state = 'held', held = amount, amount = 0, at = ARGV[2],
               ex = ARGV[8], fg = false, sp = ARGV[9], periods = {'', '', ''}})
for _, payer in ipairs(spec) do
  redis.call('HINCRBY', account_key(payer.name), 'held', amount)
end
redis.call('ZADD', HOLDS, ARGV[8], KEYS[2])
return {'held', amount}
