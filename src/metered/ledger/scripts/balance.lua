-- Balance: an account's spend in one window and its active holds.
-- KEYS[2] = the account hash. ARGV[7] account, [8] calendar index, [9] seconds, [10] width
sweep()
local b = {ci = tonumber(ARGV[8]), seconds = tonumber(ARGV[9]), width = tonumber(ARGV[10])}
return {spent_in(ARGV[7], b), held_of(ARGV[7])}
