-- Adjust and refund: correct a spent entry in the periods its spend landed in.
-- ARGV[7] amount, [8] refund '1' or '0'
sweep()
local e = load(KEYS[2])
if not e then return {'unknown'} end
if e.state == 'held' then return {'!', 'active'} end
if e.state ~= 'captured' and e.state ~= 'charged' then return unchanged(e) end
local refund = ARGV[8] == '1'
local amount = tonumber(ARGV[7])
local delta = amount - e.amount
if delta == 0 and not refund then return unchanged(e) end
e.amount = amount
if refund then e.state = 'refunded' end
local crossed = {}
record(e.spec, tonumber(e.at), e.periods, delta, crossed)
finish(KEYS[2], e, NOW)
return {'applied', e.state, amount, delta, remaining(e.spec), crossed}
