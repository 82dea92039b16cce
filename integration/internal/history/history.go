// Package history checks the fault suite's outcome: every message whose
// enqueuing transaction committed has exactly one effect in its
// destination's database, and nothing else has an effect.
//
// A test records what the senders committed and what the receivers did,
// then asks for the verdict:
//
//	h := history.New()
//	h.Committed(history.Message{ID: id, Source: "orders", Destination: "billing"})
//	h.Uncertain(m)           // the sender died inside Commit: 0 or 1 effect allowed
//	counts, err := history.CountEffects(ctx, billingPool, "effects", "message_id")
//	h.AddEffects("billing", counts)
//	if err := h.Check(); err != nil { t.Fatal(err) }
//
// Check fails with a precise list of lost messages (committed, no effect),
// duplicate effects (an effect counted more than once) and unexpected
// effects (an effect whose message was never committed), with counts.
//
// The truth is best read from the databases after the run, not from what
// the (killed) processes said: the senders' business rows, written in the
// same transaction as the enqueue, are the committed messages (LoadMessages),
// and the handlers' effect rows are the effects (CountEffects). For effects
// to show duplicates, the effect table must not have a unique constraint on
// the message id: a double effect must be two rows. EffectsTable creates
// such a table on Postgres and SQLite alike.
//
// A message is identified by its id and its destination (one message may
// go to several destinations, one effect in each).
package history

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Message is one committed (message, destination) pair.
type Message struct {
	ID          string
	Source      string // the sending service, for the report
	Destination string // the service whose database holds the effect
}

func (m Message) String() string {
	if m.Source == "" {
		return m.Destination + " " + m.ID
	}
	return m.Source + "→" + m.Destination + " " + m.ID
}

// Count is a (message, destination) pair with how many effects it had.
type Count struct {
	Message
	Effects int
}

func (c Count) String() string { return fmt.Sprintf("%v ×%d", c.Message, c.Effects) }

type key struct{ dest, id string }

type entry struct {
	msg       Message
	committed bool // false: uncertain
}

// Checker records a run's history. It is safe for concurrent use. The zero
// value is not usable; call New.
type Checker struct {
	mu      sync.Mutex
	sent    map[key]*entry
	effects map[key]int
}

// New returns an empty Checker.
func New() *Checker {
	return &Checker{sent: make(map[key]*entry), effects: make(map[key]int)}
}

// Committed records messages whose enqueuing transaction committed: each
// must have exactly one effect. Recording a message again is harmless; it
// upgrades an Uncertain record.
func (c *Checker) Committed(msgs ...Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		k := key{m.Destination, m.ID}
		if e, ok := c.sent[k]; ok {
			e.committed = true
			continue
		}
		c.sent[k] = &entry{msg: m, committed: true}
	}
}

// Uncertain records messages whose commit outcome is unknown (the sender
// was killed during Commit, or Commit failed in a way that may have
// committed): zero or one effect is correct, two are not. It does not
// downgrade a message already recorded as committed.
func (c *Checker) Uncertain(msgs ...Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		k := key{m.Destination, m.ID}
		if _, ok := c.sent[k]; !ok {
			c.sent[k] = &entry{msg: m}
		}
	}
}

// Effect records one effect of message id observed in destination's
// database. Call it once per effect row.
func (c *Checker) Effect(destination, id string) {
	c.mu.Lock()
	c.effects[key{destination, id}]++
	c.mu.Unlock()
}

// AddEffects adds effect counts by message id observed in destination's
// database, as CountEffects returns them.
func (c *Checker) AddEffects(destination string, counts map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, n := range counts {
		if n > 0 {
			c.effects[key{destination, id}] += n
		}
	}
}

// Report is the verdict of a history, with every offending message. Lists
// are sorted by destination, then id.
type Report struct {
	Committed int // messages recorded as committed
	Uncertain int // messages recorded as uncertain (and never as committed)
	// UncertainDelivered counts the uncertain messages that had one effect,
	// i.e. whose transaction did commit.
	UncertainDelivered int
	Effects            int // effects observed, in total

	Lost       []Message // committed, no effect
	Duplicates []Count   // more than one effect (committed, uncertain or not)
	Unexpected []Count   // effects of messages never recorded
}

// OK reports whether nothing was lost, duplicated or unexpected.
func (r Report) OK() bool {
	return len(r.Lost) == 0 && len(r.Duplicates) == 0 && len(r.Unexpected) == 0
}

// Summary is one line of counts.
func (r Report) Summary() string {
	return fmt.Sprintf("%d lost, %d duplicate effects, %d unexpected (%d committed, %d uncertain of which %d delivered, %d effects)",
		len(r.Lost), len(r.Duplicates), len(r.Unexpected), r.Committed, r.Uncertain, r.UncertainDelivered, r.Effects)
}

// maxListed bounds each list in Err's message; Report has them all.
const maxListed = 25

// Err is nil when the report is OK, otherwise an error listing the
// offending messages (at most 25 of each kind, with the total).
func (r Report) Err() error {
	if r.OK() {
		return nil
	}
	var b strings.Builder
	b.WriteString("history: ")
	b.WriteString(r.Summary())
	list(&b, "lost (committed, no effect)", r.Lost)
	list(&b, "duplicate effects", r.Duplicates)
	list(&b, "unexpected effects (never committed)", r.Unexpected)
	return errors.New(b.String())
}

func list[T fmt.Stringer](b *strings.Builder, title string, items []T) {
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s: %d", title, len(items))
	for i, it := range items {
		if i == maxListed {
			fmt.Fprintf(b, "\n\t... and %d more", len(items)-maxListed)
			break
		}
		fmt.Fprintf(b, "\n\t%v", it)
	}
}

// Report computes the verdict of everything recorded so far.
func (c *Checker) Report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r Report
	for k, e := range c.sent {
		n := c.effects[k]
		if e.committed {
			r.Committed++
			if n == 0 {
				r.Lost = append(r.Lost, e.msg)
			}
		} else {
			r.Uncertain++
			if n == 1 {
				r.UncertainDelivered++
			}
		}
		if n > 1 {
			r.Duplicates = append(r.Duplicates, Count{e.msg, n})
		}
	}
	for k, n := range c.effects {
		r.Effects += n
		if _, ok := c.sent[k]; !ok {
			cnt := Count{Message{ID: k.id, Destination: k.dest}, n}
			r.Unexpected = append(r.Unexpected, cnt)
			if n > 1 {
				r.Duplicates = append(r.Duplicates, cnt)
			}
		}
	}
	byKey := func(a, b Message) int {
		if c := strings.Compare(a.Destination, b.Destination); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	}
	slices.SortFunc(r.Lost, byKey)
	slices.SortFunc(r.Duplicates, func(a, b Count) int { return byKey(a.Message, b.Message) })
	slices.SortFunc(r.Unexpected, func(a, b Count) int { return byKey(a.Message, b.Message) })
	return r
}

// Check is Report().Err(): nil when every committed message had exactly one
// effect, no uncertain one had two, and no effect was unexpected.
func (c *Checker) Check() error { return c.Report().Err() }
