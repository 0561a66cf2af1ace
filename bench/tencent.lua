-- wrk script: Tencent Sns.CallbackBlackListDelete callbacks; each is acknowledged only after
-- its record is fsynced, so this measures durable acknowledgements per second.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"CallbackCommand":"Sns.CallbackBlackListDelete","PairList":[{"From_Account":"u_1001","To_Account":"u_1005"},{"From_Account":"u_1001","To_Account":"u_1006"}]}'
wrk.path = "/tencent?SdkAppid=1400000001&CallbackCommand=Sns.CallbackBlackListDelete&contenttype=json&ClientIP=203.0.113.7&OptPlatform=iOS"
