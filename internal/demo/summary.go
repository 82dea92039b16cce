package demo

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
)

// Summary is the outcome of a demo run, as printed, and as --json
// prints it.
type Summary struct {
	OK       bool     `json:"ok"` // nothing lost, nothing doubled, finished in time
	Dialect  string   `json:"dialect"`
	Where    string   `json:"where"`
	Files    []string `json:"files,omitempty"`
	Schemas  []string `json:"schemas,omitempty"`
	Inspect  string   `json:"inspect,omitempty"` // the command that lists the dead letters
	TimedOut bool     `json:"timed_out,omitempty"`

	// The workload.
	Messages     int `json:"messages"`
	Poison       int `json:"poison"` // poison orders among them
	Enqueuers    int `json:"enqueuers"`
	TxSize       int `json:"tx_size"`
	Transactions int `json:"transactions"`
	MaxAttempts  int `json:"max_attempts"`

	// The outcome, read from the databases.
	Enqueued           int64 `json:"enqueued"`             // orders committed, each with its message
	Delivered          int64 `json:"delivered"`            // messages stored in billing's inbox (handled, pending or dead-lettered)
	Handled            int64 `json:"handled"`              // inbox rows in state handled
	Effects            int64 `json:"effects"`              // invoices rows
	DeadLettered       int64 `json:"dead_lettered"`        // dead letters, both sides
	DeadLetteredOutbox int64 `json:"dead_lettered_outbox"` // of which never sent (expected 0)
	FailedAttempts     int64 `json:"failed_attempts"`      // attempts of the dead-lettered messages
	DuplicateEffects   int64 `json:"duplicate_effects"`    // message ids with more than one invoice
	Lost               int64 `json:"lost"`                 // orders with neither an invoice nor a dead letter
	UnexpectedEffects  int64 `json:"unexpected_effects"`   // invoices for no committed order
	OutboxUnsent       int64 `json:"outbox_unsent"`        // outbox rows not acknowledged at the end

	// The measurements.
	Throughput        float64 `json:"throughput_per_s"`   // handled messages per second, first commit → last handler start
	ThroughputSeconds float64 `json:"throughput_seconds"` // that span
	LatencyP50MS      float64 `json:"latency_p50_ms"`     // commit → handler start
	LatencyP99MS      float64 `json:"latency_p99_ms"`
	LatencyMaxMS      float64 `json:"latency_max_ms"`
	EnqueueSeconds    float64 `json:"enqueue_seconds"` // start → last order committed
	TotalSeconds      float64 `json:"total_seconds"`   // start → every order handled or dead-lettered
}

func (s *Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "durable demo: orders → billing over TCP on 127.0.0.1, %s\n", s.Where)
	poison := "no poison orders"
	if s.Poison > 0 {
		poison = fmt.Sprintf("%s poison orders (every %s), %d attempts each", count(int64(s.Poison)), ordinal(s.Messages/s.Poison), s.MaxAttempts)
	}
	fmt.Fprintf(w, "%s orders from %d goroutines in transactions of %d; %s\n\n",
		count(int64(s.Messages)), s.Enqueuers, s.TxSize, poison)

	row := func(name, value, note string) { fmt.Fprintf(w, "  %-18s %9s   %s\n", name, value, note) }
	row("enqueued", count(s.Enqueued), fmt.Sprintf("orders committed with their message (%s transactions)", count(int64(s.Transactions))))
	row("delivered", count(s.Delivered), "stored in billing's inbox")
	row("handled", count(s.Handled), fmt.Sprintf("handled, with %s invoices written in the handler's transaction", count(s.Effects)))
	dead := "poison orders, in durable_dead_letters"
	if s.FailedAttempts > 0 {
		dead = fmt.Sprintf("poison orders after %s failed attempts, in durable_dead_letters", count(s.FailedAttempts))
	}
	if s.DeadLetteredOutbox > 0 {
		dead += fmt.Sprintf(" (%d never sent: see orders' dead letters)", s.DeadLetteredOutbox)
	}
	row("dead-lettered", count(s.DeadLettered), dead)
	row("duplicate effects", count(s.DuplicateEffects), "message ids with more than one invoice")
	row("lost", count(s.Lost), "committed orders with neither an invoice nor a dead letter")
	if s.UnexpectedEffects > 0 {
		row("unexpected effects", count(s.UnexpectedEffects), "invoices for no committed order")
	}
	if s.OutboxUnsent > 0 {
		row("outbox unsent", count(s.OutboxUnsent), "outbox rows not acknowledged when the nodes stopped")
	}
	row("throughput", count(int64(s.Throughput+0.5))+"/s", fmt.Sprintf("first commit → last handler, %s", seconds(s.ThroughputSeconds)))
	row("latency p50", millis(s.LatencyP50MS), "commit → handler start")
	row("latency p99", millis(s.LatencyP99MS), fmt.Sprintf("(max %s)", millis(s.LatencyMaxMS)))
	row("total time", seconds(s.TotalSeconds), fmt.Sprintf("placing the orders took %s", seconds(s.EnqueueSeconds)))
	if s.LatencyP50MS > 100 {
		fmt.Fprintln(w, "\n  The orders are placed as fast as the enqueuers go, faster than billing handles them,")
		fmt.Fprintln(w, "  so the latency is mostly time spent waiting in the backlog; `durable bench` (W3)")
		fmt.Fprintln(w, "  measures it at a steady rate.")
	}

	fmt.Fprintln(w)
	switch {
	case s.TimedOut:
		fmt.Fprintln(w, "FAILED: the exchange did not finish within --max-time.")
	case !s.OK:
		fmt.Fprintln(w, "FAILED: messages were lost or handled twice.")
	default:
		fmt.Fprintln(w, "OK: every order was invoiced exactly once or dead-lettered; none was lost.")
	}
	if s.Inspect != "" {
		fmt.Fprintf(w, "\nThe dead letters, with their reason and every attempt's error:\n  %s\n", s.Inspect)
	}
	if len(s.Files) > 0 {
		fmt.Fprintf(w, "Databases (kept): %s\n", strings.Join(s.Files, ", "))
	}
	if len(s.Schemas) > 0 && s.Inspect == "" {
		fmt.Fprintf(w, "Schemas %s were dropped; pass --keep to inspect them.\n", strings.Join(s.Schemas, " and "))
	}
}

// count formats n with thousands separators.
func count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return strconv.Itoa(n) + "th"
	case n%10 == 1:
		return strconv.Itoa(n) + "st"
	case n%10 == 2:
		return strconv.Itoa(n) + "nd"
	case n%10 == 3:
		return strconv.Itoa(n) + "rd"
	}
	return strconv.Itoa(n) + "th"
}

func millis(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

func seconds(s float64) string { return fmt.Sprintf("%.2f s", s) }

// Progress draws a one-line progress bar on stderr while the demo runs,
// with plain ANSI escapes, when stderr is a terminal; otherwise it draws
// nothing. It is also the writer of the nodes' logs, so that a log line
// replaces the bar instead of being mixed into it.
type Progress struct {
	mu   sync.Mutex
	w    io.Writer
	tty  bool
	line string // the bar on screen, "" when none
}

// NewProgress returns the Progress of w (stderr).
func NewProgress(w io.Writer) *Progress {
	f, ok := w.(*os.File)
	tty := ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) && os.Getenv("TERM") != "dumb"
	return &Progress{w: w, tty: tty}
}

const clearLine = "\r\033[K"

// update redraws the bar: done is handled plus dead-lettered, out of total.
func (p *Progress) update(enqueued, total, handled, dead int64, elapsed time.Duration) {
	if !p.tty {
		return
	}
	const width = 24
	frac := min(1, float64(handled+dead)/float64(total))
	filled := int(frac * width)
	line := fmt.Sprintf("%s%s %3d%%  enqueued %s/%s  handled %s  dead %d  %.1fs",
		strings.Repeat("█", filled), strings.Repeat("░", width-filled), int(frac*100),
		count(enqueued), count(total), count(handled), dead, elapsed.Seconds())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line = line
	_, _ = io.WriteString(p.w, clearLine+line)
}

// Clear removes the bar.
func (p *Progress) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.line != "" {
		_, _ = io.WriteString(p.w, clearLine)
		p.line = ""
	}
}

// Write writes a log line above the bar.
func (p *Progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.line != "" {
		_, _ = io.WriteString(p.w, clearLine)
	}
	n, err := p.w.Write(b)
	if p.line != "" {
		_, _ = io.WriteString(p.w, p.line)
	}
	return n, err
}
