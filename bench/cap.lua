-- wrk script: OpenIM unblock callbacks from 100,000 different users, so a rate cap keyed on
-- ownerUserID is checked (and counted) on every request without ever refusing.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["operationID"] = "bench-cap"
local n = 0
request = function()
  n = n + 1
  local body = '{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_' .. (n % 100000) ..
    '","blackUserID":"u_1005"}\n'
  return wrk.format(nil, "/openim/callbackAfterRemoveBlackCommand", nil, body)
end
