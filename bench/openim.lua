-- wrk script: POSTs OpenIM callbacks as OpenIM sends them.
--
-- The requests are the lines of openim-requests.tsv beside this script (`PATH<TAB>BODY`),
-- which the fixed-rate generator (examples/fixed_rate.rs) sends too: the shared samples
-- (tests/fixtures/samples/openim) compacted to one line with a trailing newline (Go's
-- json.Encoder), keys in Go's order, in a mix weighted towards the blocklist removal
-- callback (remove, add, remove, single, remove, add, remove, group). Headers as OpenIM sets
-- them: Content-Type: application/json; charset=utf-8, and operationID. The requests are
-- formatted once per thread so the client spends its time sending, not building requests.
--
-- Every body is one the shipped policies allow, so callgate and the bare server answer with
-- the same bytes.

local requests = {}
local next_request = 1

function init(args)
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local n = 0
  for line in io.lines(here .. "openim-requests.tsv") do
    local path, body = line:match("^([^\t]+)\t(.*)$")
    if path then
      n = n + 1
      local headers = {
        ["Content-Type"] = "application/json; charset=utf-8",
        ["operationID"] = string.format("%d%06d", 1749540000000, n),
      }
      requests[n] = wrk.format("POST", path, headers, body .. "\n")
    end
  end
  assert(n > 0, "no requests in " .. here .. "openim-requests.tsv")
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end
