-- Charge: spend now on every account, after checking budgets when enforcing.
-- ARGV[7] amount, [8] charges (JSON), [9] enforce '1' or '0', [10] floor ('' for none)
sweep()
local e = load(KEYS[2])
if e then
  if e.kind ~= 'c' then return {'!', 'hold'} end
  return unchanged(e)
end
local spec = decode(ARGV[8])
local amount = tonumber(ARGV[7])
if ARGV[9] == '1' then
  local failure
  amount, failure = check(spec, amount, tonumber(ARGV[10]))
  if failure then return failure end
end
e = {kind = 'c', state = 'charged', held = 0, amount = amount, at = ARGV[2], ex = ARGV[2],
     sp = ARGV[8], periods = PERIODS}
local crossed = {}
record(spec, NOW, PERIODS, amount, crossed)
finish(KEYS[2], e, NOW)
return {'applied', 'charged', amount, amount, remaining(spec), crossed}
