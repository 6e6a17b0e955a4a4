
-- leave: ARGV = history, user id, token key.
-- Returns the id of the disconnect_user event, or 0 if the user is not online
-- (or the token is not theirs).
local joined, token = user_of(ARGV[2])
if not joined or token ~= ARGV[3] then
  return 0
end
return remove_user(ARGV[1], ARGV[2], 'leave')
