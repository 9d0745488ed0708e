-- Sweep: expire every due hold now.
return sweep()
