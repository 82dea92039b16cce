// Package filter builds the WHERE and LIMIT clauses of the dialects' list,
// replay and purge statements, so that both dialects select the same rows
// for the same query; only how a parameter is written and how a list or an
// instant is passed differ between them.
package filter

import (
	"fmt"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Syntax is how a dialect writes what a filter needs.
type Syntax struct {
	// Param writes parameter n (from 1): $n or ?n.
	Param func(n int) string
	// In writes the condition that col is one of a list parameter.
	In func(col, param string) string
	// Contains writes the condition that col contains a parameter,
	// ignoring case.
	Contains func(col, param string) string
	// List and Time turn a list of strings and an instant into arguments.
	List func(vals []string) any
	Time func(t time.Time) any
}

// Filter collects conditions, joined by AND, and their arguments.
type Filter struct {
	s     *Syntax
	first int // parameters of the statement before the filter's
	conds []string
	args  []any
}

// New returns an empty filter whose parameters are numbered from first+1.
func (s *Syntax) New(first int) *Filter { return &Filter{s: s, first: first} }

// param adds arg and returns its parameter.
func (f *Filter) param(arg any) string {
	f.args = append(f.args, arg)
	return f.s.Param(f.first + len(f.args))
}

// Cond adds a condition without arguments.
func (f *Filter) Cond(cond string) { f.conds = append(f.conds, cond) }

// Cmp adds col op arg, such as failed_at >= $1.
func (f *Filter) Cmp(col, op string, arg any) { f.Cond(col + " " + op + " " + f.param(arg)) }

// Eq adds col = val unless val is empty.
func (f *Filter) Eq(col, val string) {
	if val != "" {
		f.Cmp(col, "=", val)
	}
}

// In adds that col is one of vals, unless vals is empty.
func (f *Filter) In(col string, vals []string) {
	if len(vals) > 0 {
		f.Cond(f.s.In(col, f.param(f.s.List(vals))))
	}
}

// Since adds col >= t, unless t is zero.
func (f *Filter) Since(col string, t time.Time) {
	if !t.IsZero() {
		f.Cmp(col, ">=", f.s.Time(t))
	}
}

// Before adds col < t, unless t is zero.
func (f *Filter) Before(col string, t time.Time) {
	if !t.IsZero() {
		f.Cmp(col, "<", f.s.Time(t))
	}
}

// Where returns "WHERE" and the conditions, or "" for none.
func (f *Filter) Where() string {
	if len(f.conds) == 0 {
		return ""
	}
	return "WHERE " + strings.Join(f.conds, " AND ")
}

// Limit adds n and returns "LIMIT" and its parameter, or "" for n ≤ 0. Call
// it after the conditions, whose parameters come first.
func (f *Filter) Limit(n int) string {
	if n <= 0 {
		return ""
	}
	return "LIMIT " + f.param(n)
}

// Args returns the arguments, in parameter order.
func (f *Filter) Args() []any { return f.args }

// Statement fills the "{where}" and "{limit}" of stmt.
func (f *Filter) Statement(stmt string, limit int) string {
	l := f.Limit(limit)
	return strings.NewReplacer("{where}", f.Where(), "{limit}", l).Replace(stmt)
}

// DeadLetters adds the conditions of q on durable_dead_letters, aliased d;
// q.Limit is not one of them (see Statement). An inbox dead letter has no
// destination: saying so lets the unique index on (side, source,
// destination, id) serve a lookup by source and id.
func (f *Filter) DeadLetters(q dialects.DeadLetterQuery) {
	f.Eq("d.side", q.Side)
	if q.Side == dialects.SideInbox {
		f.Cond("d.destination = ''")
	}
	f.Eq("d.source", q.Source)
	f.Eq("d.destination", q.Destination)
	f.Eq("d.topic", q.Topic)
	f.Eq("d.reason", q.Reason)
	f.In("d.id", q.IDs)
	f.Since("d.failed_at", q.Since)
	f.Before("d.failed_at", q.Before)
	if !q.IncludeReplayed {
		f.Cond("(d.replayed_at IS NULL OR d.replayed_at < d.failed_at)")
	}
	if q.ErrorContains != "" {
		f.Cond(f.s.Contains("d.last_error", f.param(q.ErrorContains)))
	}
	if q.AfterSeq != 0 {
		f.Cmp("d.seq", ">", q.AfterSeq)
	}
	if q.BeforeSeq != 0 {
		f.Cmp("d.seq", "<", q.BeforeSeq)
	}
}

// Order returns the direction of the dead-letter list: "DESC" when q asks
// for the newest first, else "".
func Order(q dialects.DeadLetterQuery) string {
	if q.Descending {
		return "DESC"
	}
	return ""
}

// CountQuery returns q as CountDeadLetters uses it: without the limit and
// the cursors.
func CountQuery(q dialects.DeadLetterQuery) dialects.DeadLetterQuery {
	q.Limit, q.AfterSeq, q.BeforeSeq, q.Descending = 0, 0, 0, false
	return q
}

// ReplayQuery checks q's side and returns q as replay uses it: one side
// (empty means the inbox's), pending dead letters only.
func ReplayQuery(q dialects.DeadLetterQuery) (dialects.DeadLetterQuery, error) {
	switch q.Side {
	case "":
		q.Side = dialects.SideInbox
	case dialects.SideInbox, dialects.SideOutbox:
	default:
		return q, fmt.Errorf("replay dead letters: side %q: want %q or %q", q.Side, dialects.SideInbox, dialects.SideOutbox)
	}
	q.IncludeReplayed = false
	return q, nil
}
