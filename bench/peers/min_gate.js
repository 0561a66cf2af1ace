// The minimal gate of examples/min_gate.rs, written the same way in Node's http module: a
// peer for bench/load.sh (run when `node` is installed). Parse the body, check an allowlist
// and a regex, answer in OpenIM's format, and (unless the second argument is `-`) append a
// record line of the same information to a file through a write stream.
//
// Usage: node min_gate.js [PORT] [RECORDS_FILE|-]   (PORT 0 picks a free port)
"use strict";
const http = require("http");
const fs = require("fs");

const ALLOW = '{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}';
const DENY = '{"actionCode":0,"errCode":20001,"errMsg":"system accounts cannot be unblocked","errDlt":"","nextCode":1}';
const STAFF = new Set(["admin_1", "admin_2"]);
const SYSTEM = /^(sys|bot)_/;

const port = Number(process.argv[2] || 0);
const recordsPath = process.argv[3] || "-";
const records = recordsPath === "-" ? null : fs.createWriteStream(recordsPath, { flags: "a" });

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const command = req.url.replace(/^\/openim\//, "");
    let answer = ALLOW;
    let rule = "";
    try {
      const cb = JSON.parse(body);
      if (command === "callbackAfterRemoveBlackCommand" && STAFF.has(cb.ownerUserID)) {
        rule = "staff";
      } else if (typeof cb.blackUserID === "string" && SYSTEM.test(cb.blackUserID)) {
        rule = "system";
        answer = DENY;
      }
    } catch (e) {
      // Undecodable: go on, as callgate does.
    }
    if (records) {
      const decision = answer === DENY ? "deny" : "allow";
      const op = req.headers["operationid"] || "";
      records.write(
        `{"time":"${new Date().toISOString()}","command":"${command}","operation_id":"${op}","decision":"${decision}","rule":"${rule}","body":${body.trimEnd()}}\n`,
      );
    }
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(answer);
  });
});
server.keepAliveTimeout = 0;
server.listen(port, "127.0.0.1", () => {
  console.log(`min_gate.js listening on http://127.0.0.1:${server.address().port}`);
});
