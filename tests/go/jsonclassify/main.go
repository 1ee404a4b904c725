// Command jsonclassify answers, for each request body, whether CDP would create a
// channel for it: it decodes the body the way coze-discord-proxy does
// (json.NewDecoder(body).Decode(&request), controller/chat.go) into a struct whose
// channelId is a *string (model/openai.go:10-12).
//
// Input: one base64-encoded body per line on stdin. Output: one line per body,
// "create" or "nocreate". Standard library only; used by tests/test_gate_classify_go.py.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
)

type request struct {
	ChannelId *string `json:"channelId"`
}

func creates(body []byte) bool {
	var req request
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
		return false // CDP answers 500 and creates nothing
	}
	return req.ChannelId == nil || *req.ChannelId == ""
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		body, err := base64.StdEncoding.DecodeString(in.Text())
		if err != nil {
			fmt.Fprintln(out, "error")
		} else if creates(body) {
			fmt.Fprintln(out, "create")
		} else {
			fmt.Fprintln(out, "nocreate")
		}
		out.Flush()
	}
}
