-- wrk script: OpenIM unblock callbacks from 100,000 different users, so a rate cap keyed on
-- ownerUserID is checked (and counted) on every request without ever refusing.
--
-- The requests are formatted once per thread, in init, as openim.lua's are: a script that
-- builds each request as it goes costs wrk more CPU than the server's cap costs it, and on
-- two cores that slows the server down too (measured: 25,600 req/s building each request,
-- against 41,900 for callgate without a cap on prebuilt requests, with the server at 0.58
-- of a CPU), so the cap's ratio measured wrk, not the cap.
local requests = {}
local next_request = 1

function init(args)
  local headers = { ["Content-Type"] = "application/json; charset=utf-8", ["operationID"] = "bench-cap" }
  for n = 0, 99999 do
    local body = '{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_' .. n ..
      '","blackUserID":"u_1005"}\n'
    requests[n + 1] = wrk.format("POST", "/openim/callbackAfterRemoveBlackCommand", headers, body)
  end
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end
