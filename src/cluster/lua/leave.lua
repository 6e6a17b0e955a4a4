
-- leave: ARGV = history, user id, token key, and the time (ms, Redis's
-- clock) after which the node no longer waits for the answer.
-- Returns {the log entry, the disconnect_user's id (0 if the person stays),
-- 1 if the person went}; the entry is 0 if the membership is not there (or
-- the token is not its), -1 if the node gave up.
if now_ms() > tonumber(ARGV[4]) then
  return {-1, 0, 0}
end
if other_log() then
  return {-3, 0, 0}
end
local joined, token = user_of(ARGV[2])
if not joined or token ~= ARGV[3] then
  return {0, 0, 0}
end
local seq, id, gone = remove_user(ARGV[1], ARGV[2], 'leave')
return {seq, id, gone}
