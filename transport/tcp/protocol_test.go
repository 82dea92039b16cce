package tcp

import (
	"bytes"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/durable-go/durable/transport"
)

// TestProtocolDocExamples keeps the byte examples of PROTOCOL.md section 10 honest.
func TestProtocolDocExamples(t *testing.T) {
	doc, err := os.ReadFile("PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	sec := text[strings.Index(text, "## 10. Example"):]

	// Inline examples: the text between the first two backticks after a marker.
	inline := func(marker string) []byte {
		i := strings.Index(sec, marker)
		if i < 0 {
			t.Fatalf("PROTOCOL.md: %q not found", marker)
		}
		rest := sec[i:]
		a := strings.Index(rest, "`")
		b := strings.Index(rest[a+1:], "`")
		return unhex(t, strings.Fields(rest[a+1:a+1+b]))
	}
	if got, want := appendPing(nil, framePing, 1), inline("A PING with token 1"); !bytes.Equal(got, want) {
		t.Errorf("PING example: doc %x, encoder %x", want, got)
	}
	if got, want := appendAck(nil, 7, nil), inline("An ACK for batch 7"); !bytes.Equal(got, want) {
		t.Errorf("ACK example: doc %x, encoder %x", want, got)
	}

	// The BATCH block: leading hex tokens of each line inside the fence.
	i := strings.Index(sec, "A BATCH with id 1")
	block := sec[i:]
	block = block[strings.Index(block, "```")+3:]
	block = block[:strings.Index(block, "```")]
	var toks []string
	for _, line := range strings.Split(block, "\n") {
		for _, f := range strings.Fields(line) {
			if len(f) != 2 || !isHex(f) {
				break
			}
			toks = append(toks, f)
		}
	}
	want := unhex(t, toks)
	got, err := appendBatch(nil, 1, []transport.Envelope{{ID: "a", Topic: "t", SendAttempt: 1, Payload: []byte("hi")}}, DefaultMaxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("BATCH example:\n doc     %x\n encoder %x", want, got)
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

func unhex(t *testing.T, toks []string) []byte {
	b, err := hex.DecodeString(strings.Join(toks, ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
