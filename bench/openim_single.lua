-- wrk script: OpenIM callbackBeforeSendSingleMsgCommand only — the OpenIM callback of the same
-- kind as Tencent's C2C.CallbackBeforeSendMsg (a one-to-one message, a body of a few hundred
-- bytes), so load.sh can set Tencent decisions beside OpenIM decisions like for like. The body
-- is line 4 of openim-requests.tsv beside this script.
local request_text

function init(args)
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  for line in io.lines(here .. "openim-requests.tsv") do
    local path, body = line:match("^([^\t]+)\t(.*)$")
    if path == "/openim/callbackBeforeSendSingleMsgCommand" then
      local headers = { ["Content-Type"] = "application/json; charset=utf-8", ["operationID"] = "1749540000000000001" }
      request_text = wrk.format("POST", path, headers, body .. "\n")
      break
    end
  end
  assert(request_text, "no callbackBeforeSendSingleMsgCommand line in openim-requests.tsv")
end

function request()
  return request_text
end
