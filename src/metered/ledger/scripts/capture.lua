-- Capture: turn a hold (live, expired or forgotten) into spend of the actual amount.
-- ARGV[7] amount, [8] fallback charges (JSON) or ''
sweep()
local e = load(KEYS[2])
local status
if not e then
  if ARGV[8] == '' then return {'unknown'} end
  e = {kind = 'h', held = 0, ex = ARGV[2], sp = ARGV[8], spec = decode(ARGV[8])}
  status = 'late'
else
  if e.kind ~= 'h' then return {'!', 'charge'} end
  if e.state == 'held' then
    unhold(KEYS[2], e)
    status = 'applied'
  elseif e.state == 'expired' then
    status = 'late'
  else
    return unchanged(e)
  end
end
local amount = tonumber(ARGV[7])
e.state, e.amount, e.at, e.periods = 'captured', amount, ARGV[2], PERIODS
local crossed = {}
record(e.spec, NOW, PERIODS, amount, crossed)
finish(KEYS[2], e, NOW)
return {status, 'captured', amount, amount, remaining(e.spec), crossed}
