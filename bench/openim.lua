-- wrk script: POSTs OpenIM callbacks as OpenIM sends them.
--
-- Bodies are the shared samples (tests/fixtures/samples/openim) compacted to one line with a
-- trailing newline (Go's json.Encoder), keys in Go's order. Headers as OpenIM sets them:
-- Content-Type: application/json; charset=utf-8, and operationID. Requests rotate over the
-- bodies below, weighted towards the blocklist removal callback; the list is formatted once
-- per thread so the client spends its time sending, not building requests.
--
-- Every body is one the shipped policies allow, so callgate and the bare server answer with
-- the same bytes.

local bodies = {
  { cmd = "callbackAfterRemoveBlackCommand", weight = 4,
    body = '{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1005"}\n' },
  { cmd = "callbackBeforeAddBlackCommand", weight = 2,
    body = '{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1005"}\n' },
  { cmd = "callbackBeforeSendSingleMsgCommand", weight = 1,
    body = [[{"sendID":"u_1001","callbackCommand":"callbackBeforeSendSingleMsgCommand","serverMsgID":"d47dfdf26ef2fd1573ec334d38ab624e","clientMsgID":"7167155c52d1b1346ca3714096c01a18","operationID":"1749539999871294650","senderPlatformID":2,"senderNickname":"Alice","sessionType":1,"msgFrom":100,"contentType":101,"status":1,"sendTime":1749540000000,"createTime":1749539999888,"content":"{\"content\":\"Hi Bob, are we still on for the 3pm review?\"}","seq":0,"atUserList":null,"faceURL":"https://cdn.example.com/avatar/u_1001.jpg","ex":"","recvID":"u_1002"}]] .. "\n" },
  { cmd = "callbackBeforeSendGroupMsgCommand", weight = 1,
    body = [[{"sendID":"u_1001","callbackCommand":"callbackBeforeSendGroupMsgCommand","serverMsgID":"0c6853cc31e96d8c1350368e320c6fe5","clientMsgID":"08d17a1bdeddbc3b8d0237440e352b2e","operationID":"1749540059912044817","senderPlatformID":2,"senderNickname":"Alice","sessionType":3,"msgFrom":100,"contentType":106,"status":1,"sendTime":1749540060000,"createTime":1749540059888,"content":"{\"text\":\"@Bob please upload the Q3 draft before 5pm\",\"atUserList\":[\"u_1002\"],\"atUsersInfo\":[{\"atUserID\":\"u_1002\",\"groupNickname\":\"Bob\"}],\"isAtSelf\":false}","seq":0,"atUserList":["u_1002"],"faceURL":"https://cdn.example.com/avatar/u_1001.jpg","ex":"","groupID":"3259018725"}]] .. "\n" },
}

local requests = {}
local next_request = 1

function init(args)
  local n = 0
  for _, b in ipairs(bodies) do
    for w = 1, b.weight do
      n = n + 1
      local headers = {
        ["Content-Type"] = "application/json; charset=utf-8",
        ["operationID"] = string.format("%d%06d", 1749540000000, n),
      }
      requests[n] = wrk.format("POST", "/openim/" .. b.cmd, headers, b.body)
    end
  end
  -- Interleave the copies (1-4 remove, 5-6 add, 7 single, 8 group) so each connection
  -- sends a mix: remove, add, remove, single, remove, add, remove, group.
  local order = { 1, 5, 2, 7, 3, 6, 4, 8 }
  local shuffled = {}
  for i, k in ipairs(order) do
    shuffled[i] = requests[k]
  end
  requests = shuffled
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end
