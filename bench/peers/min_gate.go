// The minimal gate of examples/min_gate.rs, written the same way in Go's net/http: a peer
// for bench/load.sh (run when `go` is installed; the standard library only, built with
// `go build min_gate.go`, no go.mod). Parse the body into a struct, check an allowlist and
// a regex, answer in OpenIM's format, and (unless the second argument is `-`) hand a record
// line of the same information to one writer goroutine that appends it to a file.
//
// Usage: min_gate ADDR|PORT RECORDS_FILE|-   (default 127.0.0.1:0 and `-`; a bare PORT
// listens on 127.0.0.1, PORT 0 picks a free port). Prints
// `min_gate.go listening on http://ADDR` once bound.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"time"
)

const (
	allow        = `{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}`
	deny         = `{"actionCode":0,"errCode":20001,"errMsg":"system accounts cannot be unblocked","errDlt":"","nextCode":1}`
	maxBodyBytes = 1 << 20
)

// The shipped policies' staff list and the shipped rule's regex, as the other two gates.
var (
	staff  = map[string]bool{"admin_1": true, "admin_2": true}
	system = regexp.MustCompile(`^(sys|bot)_`)
)

// callback holds the fields the checks read; the rest of the body is skipped while parsing.
// Unlike serde in min_gate.rs, encoding/json matches keys case-insensitively and reads null
// as "" (serde refuses it, so that gate allows without a record); no bench body has either.
type callback struct {
	OwnerUserID string `json:"ownerUserID"`
	BlackUserID string `json:"blackUserID"`
}

// gate answers callbacks; records is nil when records are off.
type gate struct {
	records chan<- []byte
}

func main() {
	addr, path := "127.0.0.1:0", "-"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if len(os.Args) > 2 {
		path = os.Args[2]
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort("127.0.0.1", addr)
	}
	var g gate
	if path != "-" {
		file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "min_gate.go: cannot open %s: %v\n", path, err)
			os.Exit(1)
		}
		g.records = startWriter(file)
	}
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "min_gate.go: cannot listen on `%s`: %v; write IP:PORT or PORT\n", addr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/openim/", g.serveCallback)
	fmt.Printf("min_gate.go listening on http://%s\n", listener.Addr())
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintf(os.Stderr, "min_gate.go: %v\n", err)
		os.Exit(1)
	}
}

// startWriter starts the writer goroutine: it appends each line as it comes and flushes
// when the channel is drained, so a burst costs one write(2), not one per line.
func startWriter(file *os.File) chan<- []byte {
	lines := make(chan []byte, 4096)
	go func() {
		out := bufio.NewWriterSize(file, 1<<16)
		for line := range lines {
			out.Write(line)
		drain:
			for {
				select {
				case line := <-lines:
					out.Write(line)
				default:
					break drain
				}
			}
			out.Flush()
		}
	}()
	return lines
}

// serveCallback is POST /openim/{command}: read, decide, answer.
func (g *gate) serveCallback(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		http.Error(w, "payload too large", http.StatusRequestEntityTooLarge)
		return
	}
	command := r.URL.Path[len("/openim/"):]
	answer := g.decide(command, r.Header.Get("operationID"), body)
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, answer)
}

// decide parses, checks and records; an undecodable body is allowed, as callgate does.
func (g *gate) decide(command, operationID string, body []byte) string {
	var cb callback
	if err := json.Unmarshal(body, &cb); err != nil {
		return allow
	}
	rule, answer := "", allow
	if command == "callbackAfterRemoveBlackCommand" && staff[cb.OwnerUserID] {
		rule = "staff"
	} else if system.MatchString(cb.BlackUserID) {
		rule, answer = "system", deny
	}
	if g.records != nil {
		decision := "allow"
		if answer == deny {
			decision = "deny"
		}
		line := fmt.Appendf(nil,
			`{"time":"%s","command":"%s","operation_id":"%s","decision":"%s","rule":"%s","body":`,
			time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), command, operationID, decision, rule)
		line = append(line, bytes.TrimRight(body, " \t\n\f\r")...)
		g.records <- append(line, "}\n"...)
	}
	return answer
}
