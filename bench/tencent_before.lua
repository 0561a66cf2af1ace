-- wrk script: Tencent C2C.CallbackBeforeSendMsg before-callbacks, signed, each decided by
-- the policies (load.sh writes @TIME@ and @SIGN@: a RequestTime and its Sign). The body is
-- the shared sample (tests/fixtures/samples/tencent), which the bench's rules allow.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"CallbackCommand":"C2C.CallbackBeforeSendMsg","From_Account":"u_1001","To_Account":"u_1002","MsgSeq":93847,"MsgRandom":1287657,"MsgTime":1749540000,"MsgKey":"93847_1287657_1749540000","OnlineOnlyFlag":0,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"Hi Bob, are we still on for the 3pm review?"}}],"CloudCustomData":"{\\"topic\\":\\"review\\"}"}'
wrk.path = "/tencent?SdkAppid=1400000001&CallbackCommand=C2C.CallbackBeforeSendMsg&contenttype=json&ClientIP=203.0.113.7&OptPlatform=iOS&RequestTime=@TIME@&Sign=@SIGN@"
