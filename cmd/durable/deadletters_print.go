package main

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/durable-go/durable/deadletter"
)

// Time layouts of the text output, always in UTC.
const (
	tableTime  = "2006-01-02 15:04:05 UTC"
	detailTime = "2006-01-02 15:04:05.000 UTC"
)

// lastErrorWidth bounds the last error in list's table, in characters.
const lastErrorWidth = 60

// peerOf is a dead letter's source or destination, whichever its side has.
func peerOf(d *deadletter.DeadLetter) string {
	if d.Side == sideOutbox {
		return d.Destination
	}
	return d.Source
}

// deadLetterList is what list prints with --json.
type deadLetterList struct {
	Database string `json:"database"`
	Side     string `json:"side"` // "inbox" or "outbox"
	Count    int    `json:"count"`
	// More is set when more dead letters match than --limit let through.
	More        bool             `json:"more"`
	DeadLetters []deadLetterJSON `json:"dead_letters"`
}

// deadLetterJSON is one dead letter in JSON: every field, times in UTC, the
// payload as text when it is valid UTF-8, else base64.
type deadLetterJSON struct {
	Side            string            `json:"side"`        // "inbox" or "outbox"
	Source          string            `json:"source"`      // inbox side; "" on the outbox side
	Destination     string            `json:"destination"` // outbox side; "" on the inbox side
	ID              string            `json:"id"`
	Topic           string            `json:"topic"`
	Key             string            `json:"key"`
	Headers         map[string]string `json:"headers"`
	Payload         string            `json:"payload"`
	PayloadEncoding string            `json:"payload_encoding"` // "utf-8" or "base64"
	CreatedAt       time.Time         `json:"created_at"`
	ExpiresAt       *time.Time        `json:"expires_at"` // null: never
	Reason          string            `json:"reason"`
	Attempts        int               `json:"attempts"`
	LastError       string            `json:"last_error"`
	Errors          []attemptJSON     `json:"errors"`
	FirstFailedAt   time.Time         `json:"first_failed_at"`
	FailedAt        time.Time         `json:"failed_at"`
	ReplayedAt      *time.Time        `json:"replayed_at"` // null: never
	Pending         bool              `json:"pending"`
}

type attemptJSON struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func toDeadLetterJSON(d *deadletter.DeadLetter) deadLetterJSON {
	out := deadLetterJSON{
		Side: d.Side, Source: d.Source, Destination: d.Destination, ID: d.ID, Topic: d.Topic, Key: d.Key, Headers: d.Headers,
		CreatedAt: d.CreatedAt.UTC(), ExpiresAt: optionalTime(d.ExpiresAt),
		Reason: d.Reason, Attempts: d.Attempts, LastError: d.LastError, Errors: []attemptJSON{},
		FirstFailedAt: d.FirstFailedAt.UTC(), FailedAt: d.FailedAt.UTC(), ReplayedAt: optionalTime(d.ReplayedAt),
		Pending: d.Pending(),
	}
	if out.Headers == nil {
		out.Headers = map[string]string{}
	}
	if utf8.Valid(d.Payload) {
		out.Payload, out.PayloadEncoding = string(d.Payload), "utf-8"
	} else {
		out.Payload, out.PayloadEncoding = base64.StdEncoding.EncodeToString(d.Payload), "base64"
	}
	for _, e := range d.Errors {
		out.Errors = append(out.Errors, attemptJSON{Attempt: e.Attempt, At: e.At.UTC(), Error: e.Error})
	}
	return out
}

// printDeadLetterTable prints list's table and a closing line.
func (a *app) printDeadLetterTable(dls []deadletter.DeadLetter, fl *deadLetterFlags, more bool) error {
	what := "pending " + noun(fl.side)
	if fl.includeReplayed {
		what = noun(fl.side)
	}
	if len(dls) == 0 {
		if fl.filtered() {
			fmt.Fprintf(a.stdout, "no %ss match (%s)\n", what, fl.describe())
		} else {
			fmt.Fprintf(a.stdout, "no %ss\n", what)
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	peer := "SOURCE"
	if fl.side == sideOutbox {
		peer = "DESTINATION"
	}
	header := "ID\t" + peer + "\tTOPIC\tREASON\tATTEMPTS\tFAILED AT\t"
	if fl.includeReplayed {
		header += "REPLAYED AT\t"
	}
	fmt.Fprintln(tw, header+"LAST ERROR")
	for i := range dls {
		d := &dls[i]
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s\t", oneLineText(d.ID), oneLineText(peerOf(d)), oneLineText(d.Topic),
			d.Reason, d.Attempts, d.FailedAt.UTC().Format(tableTime))
		if fl.includeReplayed {
			r := "-"
			if !d.ReplayedAt.IsZero() {
				r = d.ReplayedAt.UTC().Format(tableTime)
			}
			row += r + "\t"
		}
		fmt.Fprintln(tw, row+truncateText(oneLineText(d.LastError), lastErrorWidth))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if more {
		fmt.Fprintf(a.stdout, "the oldest %s; more match (raise --limit, or 0 for all)\n", plural(len(dls), what))
	} else {
		fmt.Fprintf(a.stdout, "%s, oldest first\n", plural(len(dls), what))
	}
	return nil
}

// printDeadLetter prints show's full description of d.
func (a *app) printDeadLetter(d *deadletter.DeadLetter) error {
	var b strings.Builder
	state := "pending"
	if !d.Pending() {
		state = "replayed, not failed since"
	}
	if d.Side == sideOutbox {
		fmt.Fprintf(&b, "outbox dead letter %s for %s (%s)\n", oneLineText(d.ID), oneLineText(d.Destination), state)
	} else {
		fmt.Fprintf(&b, "dead letter %s from %s (%s)\n", oneLineText(d.ID), oneLineText(d.Source), state)
	}
	field := func(name, value string) { fmt.Fprintf(&b, "%-14s%s\n", name+":", value) }
	when := func(t time.Time, zero string) string {
		if t.IsZero() {
			return zero
		}
		return t.UTC().Format(detailTime)
	}
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return oneLineText(s)
	}
	field("topic", orDash(d.Topic))
	field("key", orDash(d.Key))
	field("reason", d.Reason)
	field("attempts", fmt.Sprint(d.Attempts))
	field("created at", when(d.CreatedAt, "-"))
	field("expires at", when(d.ExpiresAt, "never"))
	field("first failed", when(d.FirstFailedAt, "-"))
	field("failed at", when(d.FailedAt, "-"))
	field("replayed at", when(d.ReplayedAt, "never"))
	field("last error", firstLine(d.LastError))

	if len(d.Headers) == 0 {
		field("headers", "none")
	} else {
		field("headers", fmt.Sprint(len(d.Headers)))
		for _, k := range slices.Sorted(maps.Keys(d.Headers)) {
			fmt.Fprintf(&b, "  %s: %s\n", oneLineText(k), oneLineText(d.Headers[k]))
		}
	}

	switch {
	case len(d.Payload) == 0:
		field("payload", "empty")
	case isText(d.Payload):
		field("payload", plural(len(d.Payload), "byte")+", text")
		b.WriteString(indent(string(d.Payload), "  "))
	default:
		field("payload", plural(len(d.Payload), "byte")+", binary (hex)")
		b.WriteString(indent(hex.Dump(d.Payload), "  "))
	}

	field("errors", fmt.Sprint(len(d.Errors)))
	for _, e := range d.Errors {
		fmt.Fprintf(&b, "  attempt %d at %s\n", e.Attempt, when(e.At, "-"))
		b.WriteString(indent(multiLineText(e.Error), "    "))
	}
	_, err := a.stdout.Write([]byte(b.String()))
	return err
}

// isText reports whether a payload reads as text: valid UTF-8 without
// control characters other than newlines and tabs.
func isText(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}

// indent prefixes every line of s and ends it with a newline.
func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}

// multiLineText makes s safe for a terminal: control characters other than
// newlines and tabs (escape sequences among them) and invalid UTF-8 are
// shown escaped, as \x1b.
func multiLineText(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r == '\r':
		case unicode.IsControl(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// oneLineText is multiLineText on one line: runs of whitespace, newlines
// included, become one space.
func oneLineText(s string) string {
	return strings.Join(strings.Fields(multiLineText(s)), " ")
}

// firstLine is the first non-empty line of s, made safe, marked "…" when
// more lines follow.
func firstLine(s string) string {
	lines := strings.Split(strings.TrimSpace(multiLineText(s)), "\n")
	first := strings.Join(strings.Fields(lines[0]), " ")
	if first == "" {
		return "-"
	}
	if len(lines) > 1 {
		first += " …"
	}
	return first
}

// truncateText shortens s to at most width characters, ending in "…" when
// it was cut.
func truncateText(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return strings.TrimRight(string(r[:width-1]), " ") + "…"
}
