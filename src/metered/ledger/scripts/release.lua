-- Release: drop a live hold without spending; a no-op for any other key.
sweep()
local e = load(KEYS[2])
if not e then return {'ok'} end
if e.kind ~= 'h' then return {'!', 'charge'} end
if e.state == 'held' then
  unhold(KEYS[2], e)
  e.state = 'released'
  finish(KEYS[2], e, NOW)
end
return {'ok'}
