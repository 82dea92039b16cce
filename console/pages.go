package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

// maxReasonCounts is the number of pending dead letters above which the
// overview does not count them by reason (a count per side and reason
// reads every matching row: about 250 ms each at a million on Postgres).
const maxReasonCounts = 100_000

// listLimit bounds the pending and in-flight lists of the outbox and inbox
// (the oldest rows first).
const listLimit = 200

func (h *Handler) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", h.overview)
	m.HandleFunc("GET /deadletters", h.deadLetters)
	m.HandleFunc("GET /deadletters/{seq}", h.deadLetter)
	m.HandleFunc("POST /deadletters/action", h.deadLetterAction)
	m.HandleFunc("GET /outbox", h.outboxList)
	m.HandleFunc("GET /outbox/message", h.outboxMessage)
	m.HandleFunc("GET /inbox", h.inboxList)
	m.HandleFunc("GET /inbox/message", h.inboxMessage)
	m.HandleFunc("GET /pauses", h.pauses)
	m.HandleFunc("POST /pauses", h.pauseAction)
	m.HandleFunc("GET /audit", h.auditPage)
	m.Handle("GET /assets/", assetHandler())
	h.mux = m
}

// page is what every template gets.
type page struct {
	Base    string // the prefix, for links
	User    string
	Admin   bool
	CSRF    string
	Title   string
	Nav     string // the active section
	Refresh int    // seconds; 0: none
	Notice  string
	Error   string
	Data    any
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	id := who(r)
	p.Base, p.User, p.Admin = h.prefix, id.user, id.role == RoleAdmin
	if p.Admin {
		p.CSRF = h.csrfToken(id.user)
	}
	if p.Notice == "" {
		p.Notice = r.URL.Query().Get("notice")
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := h.tmpl.execute(w, status, name, p); err != nil {
		h.log.Error("durable/console: render", "page", name, "err", err)
	}
}

// fail renders an error page: a bad request for errBadInput, else 500.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	if errors.Is(err, errBadInput) {
		status = http.StatusBadRequest
	} else {
		h.log.Error("durable/console: request", "path", r.URL.Path, "err", err)
	}
	h.render(w, r, status, "error", page{Title: http.StatusText(status), Error: err.Error()})
}

var errBadInput = errors.New("bad input")

func badInput(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadInput, fmt.Sprintf(format, args...))
}

// ---- overview

type destRow struct {
	dialects.OutboxStats
	LastError string
	Paused    *dialects.Pause
}

type topicRow struct {
	Topic string
	dialects.InboxCounts
}

type deadCount struct {
	Side, Reason string
	Count        int
}

type overviewData struct {
	Destinations []destRow
	Inbox        dialects.InboxCounts
	OldestReady  time.Duration // 0: none
	Topics       []topicRow
	Queues       []dialects.Pause // paused queues
	DeadOutbox   int64            // pending outbox dead letters
	DeadInbox    int64            // pending inbox dead letters
	DeadByReason []deadCount
	DeadTotal    int
	// DeadByReasonSkipped: more than maxReasonCounts pending dead letters,
	// not counted by reason.
	DeadByReasonSkipped bool
	Chart               chart
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var d overviewData
	stats, err := h.store.OutboxStats(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	pauses, err := h.store.ListPauses(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	paused := map[string]*dialects.Pause{}
	for i := range pauses {
		p := &pauses[i]
		if p.Kind == dialects.PauseDestination {
			paused[p.Name] = p
		} else {
			d.Queues = append(d.Queues, *p)
		}
	}
	for _, s := range stats {
		row := destRow{OutboxStats: s, Paused: paused[s.Destination]}
		delete(paused, s.Destination)
		if row.LastError, err = h.lastSendError(r, s.Destination); err != nil {
			h.fail(w, r, err)
			return
		}
		d.Destinations = append(d.Destinations, row)
	}
	for name, p := range paused { // paused destinations without a backlog
		d.Destinations = append(d.Destinations, destRow{OutboxStats: dialects.OutboxStats{Destination: name}, Paused: p})
	}
	slices.SortFunc(d.Destinations, func(a, b destRow) int { return strings.Compare(a.Destination, b.Destination) })

	in, err := h.store.InboxStats(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d.Inbox = in.InboxCounts
	for t, c := range in.Topics {
		d.Topics = append(d.Topics, topicRow{t, c})
	}
	slices.SortFunc(d.Topics, func(a, b topicRow) int { return strings.Compare(a.Topic, b.Topic) })
	oldest, err := h.store.ListInbox(ctx, dialects.InboxQuery{State: dialects.InboxStateReady, Limit: 1})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(oldest) == 1 && !oldest[0].ReceivedAt.IsZero() {
		d.OldestReady = max(0, h.now().Sub(oldest[0].ReceivedAt))
	}
	// The totals per side are free (the stats count them); the counts by
	// reason are one count each, so they are left out of a large table.
	sideTotal := map[string]int64{dialects.SideInbox: in.Dead}
	for _, s := range stats {
		sideTotal[dialects.SideOutbox] += s.DeadLetters
	}
	d.DeadOutbox, d.DeadInbox = sideTotal[dialects.SideOutbox], sideTotal[dialects.SideInbox]
	d.DeadByReasonSkipped = d.DeadOutbox+d.DeadInbox > maxReasonCounts
	for _, side := range []string{dialects.SideOutbox, dialects.SideInbox} {
		if d.DeadByReasonSkipped || sideTotal[side] == 0 {
			continue
		}
		for _, reason := range reasons(side) {
			n, err := h.store.CountDeadLetters(ctx, dialects.DeadLetterQuery{Side: side, Reason: reason})
			if err != nil {
				h.fail(w, r, err)
				return
			}
			if n > 0 {
				d.DeadByReason = append(d.DeadByReason, deadCount{side, reason, n})
				d.DeadTotal += n
			}
		}
	}
	now := h.now().UTC().Truncate(time.Minute)
	tp, err := h.store.ListThroughput(ctx, now.Add(-59*time.Minute))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d.Chart = buildChart(tp, now)

	refresh := 10
	if h.cfg.Refresh > 0 {
		refresh = max(1, int(h.cfg.Refresh/time.Second))
	} else if h.cfg.Refresh < 0 {
		refresh = 0
	}
	h.render(w, r, http.StatusOK, "overview", page{Title: "Overview", Nav: "overview", Refresh: refresh, Data: d})
}

// lastSendError returns the last error of the destination's oldest unsent
// rows that have one (the rows a failing peer holds up first).
func (h *Handler) lastSendError(r *http.Request, dest string) (string, error) {
	rows, err := h.store.ListOutbox(r.Context(), dialects.OutboxQuery{Destination: dest, Limit: 20})
	if err != nil {
		return "", err
	}
	for _, row := range rows {
		if row.SentAt.IsZero() && row.LastError != "" {
			return row.LastError, nil
		}
	}
	return "", nil
}

// reasons lists the dead-letter reasons of side.
func reasons(side string) []string {
	switch side {
	case dialects.SideInbox:
		return []string{dialects.ReasonHandlerError, dialects.ReasonPermanent, dialects.ReasonDecodeError, dialects.ReasonNoHandler, dialects.ReasonExpired}
	case dialects.SideOutbox:
		return []string{dialects.ReasonExpired, dialects.ReasonRejected}
	}
	return nil
}

// ---- dead letters

// filter is the dead-letter list's filter form, as query parameters.
type filter struct {
	Side, Peer, Topic, Reason, Since, Before, Error string
	Replayed                                        bool // include replayed
}

func readFilter(v url.Values) filter {
	return filter{
		Side: strings.TrimSpace(v.Get("side")), Peer: strings.TrimSpace(v.Get("peer")),
		Topic: strings.TrimSpace(v.Get("topic")), Reason: strings.TrimSpace(v.Get("reason")),
		Since: strings.TrimSpace(v.Get("since")), Before: strings.TrimSpace(v.Get("before_time")),
		Error: v.Get("error"), Replayed: v.Get("replayed") == "1",
	}
}

// values are f's query parameters (empty ones left out).
func (f filter) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"side": f.Side, "peer": f.Peer, "topic": f.Topic, "reason": f.Reason,
		"since": f.Since, "before_time": f.Before, "error": f.Error} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if f.Replayed {
		v.Set("replayed", "1")
	}
	return v
}

// Empty reports whether f filters nothing.
func (f filter) Empty() bool { return len(f.values()) == 0 }

// String describes f for the audit table.
func (f filter) String() string {
	if f.Empty() {
		return "all"
	}
	s, _ := url.QueryUnescape(f.values().Encode())
	return s
}

// parseTime reads a time of the filter: RFC 3339, or a datetime-local
// input's value (UTC).
func parseTime(name, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, badInput("%s %q is not a time (2006-01-02T15:04, UTC, or RFC 3339)", name, s)
}

// query is f as a dead-letter query.
func (f filter) query() (dialects.DeadLetterQuery, error) {
	q := dialects.DeadLetterQuery{Side: f.Side, Topic: f.Topic, Reason: f.Reason, ErrorContains: f.Error, IncludeReplayed: f.Replayed}
	switch f.Side {
	case "", dialects.SideInbox, dialects.SideOutbox:
	default:
		return q, badInput("side %q is neither %q nor %q", f.Side, dialects.SideInbox, dialects.SideOutbox)
	}
	if f.Reason != "" && !slices.Contains(reasons(dialects.SideInbox), f.Reason) && !slices.Contains(reasons(dialects.SideOutbox), f.Reason) {
		return q, badInput("unknown reason %q", f.Reason)
	}
	switch {
	case f.Peer == "":
	case f.Side == dialects.SideInbox:
		q.Source = f.Peer
	case f.Side == dialects.SideOutbox:
		q.Destination = f.Peer
	default:
		return q, badInput("choose a side to filter by peer (the source of an inbox dead letter, the destination of an outbox one)")
	}
	var err error
	if q.Since, err = parseTime("since", f.Since); err != nil {
		return q, err
	}
	if q.Before, err = parseTime("before", f.Before); err != nil {
		return q, err
	}
	return q, nil
}

// Peer is the dead letter's peer: its source (inbox) or destination
// (outbox).
func peer(d *dialects.DeadLetterRow) string {
	if d.Side == dialects.SideOutbox {
		return d.Destination
	}
	return d.Source
}

// key names one dead letter in a form's selection: side, peer and id as a
// query string.
func key(d *dialects.DeadLetterRow) string {
	return url.Values{"side": {d.Side}, "peer": {peer(d)}, "id": {d.ID}}.Encode()
}

type deadRow struct {
	*dialects.DeadLetterRow
	Peer, Key, Link string
}

type deadListData struct {
	Filter      filter
	Rows        []deadRow
	Sides       []string
	Reasons     []string
	Next, Prev  string // links; empty: none
	FilterQuery string // the filter's query string, for the action form
}

func (h *Handler) deadLetters(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f := readFilter(v)
	q, err := f.query()
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "deadletters", page{Title: "Dead letters", Nav: "deadletters", Error: err.Error(),
			Data: deadListData{Filter: f, Sides: []string{dialects.SideInbox, dialects.SideOutbox}, Reasons: allReasons()}})
		return
	}
	before, err := cursor(v, "before")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	after, err := cursor(v, "after")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	n := h.pageLen
	q.Limit = n + 1
	var rows []dialects.DeadLetterRow
	var hasNext, hasPrev bool
	if after > 0 {
		// The page above after: the n oldest rows newer than it, shown
		// newest first.
		q.AfterSeq = after
		if rows, err = h.store.ListDeadLetters(r.Context(), q); err != nil {
			h.fail(w, r, err)
			return
		}
		hasPrev = len(rows) > n
		rows = rows[:min(n, len(rows))]
		slices.Reverse(rows)
		hasNext = true
	} else {
		q.Descending = true
		q.BeforeSeq = before
		if rows, err = h.store.ListDeadLetters(r.Context(), q); err != nil {
			h.fail(w, r, err)
			return
		}
		hasNext = len(rows) > n
		rows = rows[:min(n, len(rows))]
		hasPrev = before > 0
	}
	d := deadListData{Filter: f, Sides: []string{dialects.SideInbox, dialects.SideOutbox}, Reasons: allReasons(),
		FilterQuery: f.values().Encode()}
	for i := range rows {
		row := &rows[i]
		d.Rows = append(d.Rows, deadRow{row, peer(row), key(row), h.prefix + "/deadletters/" + strconv.FormatInt(row.Seq, 10)})
	}
	if len(rows) > 0 {
		if hasNext {
			nv := f.values()
			nv.Set("before", strconv.FormatInt(rows[len(rows)-1].Seq, 10))
			d.Next = h.prefix + "/deadletters?" + nv.Encode()
		}
		if hasPrev {
			pv := f.values()
			pv.Set("after", strconv.FormatInt(rows[0].Seq, 10))
			d.Prev = h.prefix + "/deadletters?" + pv.Encode()
		}
	} else if before > 0 || after > 0 {
		d.Prev = h.prefix + "/deadletters?" + f.values().Encode()
	}
	h.render(w, r, http.StatusOK, "deadletters", page{Title: "Dead letters", Nav: "deadletters", Data: d})
}

func allReasons() []string {
	return []string{dialects.ReasonHandlerError, dialects.ReasonPermanent, dialects.ReasonDecodeError,
		dialects.ReasonNoHandler, dialects.ReasonExpired, dialects.ReasonRejected}
}

func cursor(v url.Values, name string) (int64, error) {
	s := v.Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, badInput("%s %q is not a positive sequence number", name, s)
	}
	return n, nil
}

type messageData struct {
	Kind       string // "dead letter", "outbox message", "inbox message"
	Side       string
	Seq        int64
	ID         string
	Peer       string
	PeerLabel  string
	Topic      string
	Key        string
	Fields     []field
	Headers    []field
	Payload    payloadView
	Errors     []dialects.AttemptError
	LastError  string
	ActionKey  string // dead letters: the selection key of the actions
	Pending    bool
	Replayable bool
}

type field struct{ Name, Value string }

func (h *Handler) deadLetter(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseInt(r.PathValue("seq"), 10, 64)
	if err != nil || seq <= 0 {
		h.fail(w, r, badInput("%q is not a dead letter's sequence number", r.PathValue("seq")))
		return
	}
	rows, err := h.store.ListDeadLetters(r.Context(), dialects.DeadLetterQuery{AfterSeq: seq - 1, Limit: 1, IncludeReplayed: true})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(rows) == 0 || rows[0].Seq != seq {
		h.render(w, r, http.StatusNotFound, "error", page{Title: "Not found", Error: fmt.Sprintf("no dead letter %d (replayed and purged, or never there)", seq)})
		return
	}
	d := &rows[0]
	m := messageData{Kind: "dead letter", Side: d.Side, Seq: d.Seq, ID: d.ID, Peer: peer(d), Topic: d.Topic, Key: d.Key,
		Headers: headerFields(d.Headers), Payload: viewPayload(d.Payload), Errors: d.Errors, LastError: d.LastError,
		ActionKey: key(d), Pending: d.Pending(), Replayable: d.Pending()}
	m.PeerLabel = "Source"
	if d.Side == dialects.SideOutbox {
		m.PeerLabel = "Destination"
	}
	m.Fields = []field{
		{"Reason", d.Reason}, {"Attempts", strconv.Itoa(d.Attempts)},
		{"Created", fmtTime(d.CreatedAt)}, {"Expires", fmtTime(d.ExpiresAt)},
		{"First failed", fmtTime(d.FirstFailedAt)}, {"Failed", fmtTime(d.FailedAt)}, {"Replayed", fmtTime(d.ReplayedAt)},
	}
	h.render(w, r, http.StatusOK, "message", page{Title: "Dead letter " + d.ID, Nav: "deadletters", Data: m})
}

// ---- dead-letter actions

// selection is a set of dead letters named in a form, grouped by side and
// peer.
type selection struct {
	side, peer string
	ids        []string
}

func readSelection(keys []string) ([]selection, int, error) {
	var out []selection
	n := 0
	for _, k := range keys {
		v, err := url.ParseQuery(k)
		if err != nil || v.Get("id") == "" || (v.Get("side") != dialects.SideInbox && v.Get("side") != dialects.SideOutbox) {
			return nil, 0, badInput("selection %q does not name a dead letter", k)
		}
		side, p, id := v.Get("side"), v.Get("peer"), v.Get("id")
		i := slices.IndexFunc(out, func(s selection) bool { return s.side == side && s.peer == p })
		if i < 0 {
			out = append(out, selection{side: side, peer: p})
			i = len(out) - 1
		}
		if !slices.Contains(out[i].ids, id) {
			out[i].ids = append(out[i].ids, id)
			n++
		}
	}
	return out, n, nil
}

func (s selection) query(includeReplayed bool) dialects.DeadLetterQuery {
	q := dialects.DeadLetterQuery{Side: s.side, IDs: s.ids, IncludeReplayed: includeReplayed}
	if s.side == dialects.SideOutbox {
		q.Destination = s.peer
	} else {
		q.Source = s.peer
	}
	return q
}

type confirmData struct {
	Op, Scope   string
	Count       int
	What        string
	Selected    []string
	Filter      filter
	Hidden      []field
	Cancel      string
	ConfirmName string
}

// deadLetterAction replays or purges dead letters: do = replay-selected,
// purge-selected, replay-all or purge-all (everything matching the
// filter). Without confirm=yes it renders the confirmation page with the
// count.
func (h *Handler) deadLetterAction(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	form := r.PostForm
	op, scope, _ := strings.Cut(form.Get("do"), "-")
	if (op != "replay" && op != "purge") || (scope != "selected" && scope != "all") {
		h.fail(w, r, badInput("unknown action %q", form.Get("do")))
		return
	}
	f := readFilter(form)
	back := h.prefix + "/deadletters?" + f.values().Encode()
	var (
		sel   []selection
		count int
		what  string
		q     dialects.DeadLetterQuery
		err   error
	)
	if scope == "selected" {
		var n int
		if sel, n, err = readSelection(form["sel"]); err != nil {
			h.fail(w, r, err)
			return
		}
		if n == 0 {
			http.Redirect(w, r, back+"&notice="+url.QueryEscape("Nothing selected."), http.StatusSeeOther)
			return
		}
		for _, s := range sel {
			c, err := h.store.CountDeadLetters(ctx, s.query(op == "purge"))
			if err != nil {
				h.fail(w, r, err)
				return
			}
			count += c
			what += fmt.Sprintf("%s %s: %s; ", s.side, s.peer, strings.Join(s.ids, ", "))
		}
		what = strings.TrimSuffix(what, "; ")
		if len(form["sel"]) == 1 && form.Get("from") != "" {
			back = form.Get("from")
			if !strings.HasPrefix(back, h.prefix+"/deadletters/") {
				back = h.prefix + "/deadletters"
			}
		}
	} else {
		if q, err = f.query(); err != nil {
			h.fail(w, r, err)
			return
		}
		if count, err = h.store.CountDeadLetters(ctx, q); err != nil {
			h.fail(w, r, err)
			return
		}
		what = "every dead letter matching " + f.String()
	}
	if form.Get("confirm") != "yes" {
		d := confirmData{Op: op, Scope: scope, Count: count, What: what, Selected: form["sel"], Filter: f, Cancel: back}
		for k, vs := range f.values() {
			d.Hidden = append(d.Hidden, field{k, vs[0]})
		}
		slices.SortFunc(d.Hidden, func(a, b field) int { return strings.Compare(a.Name, b.Name) })
		if from := form.Get("from"); from != "" {
			d.Hidden = append(d.Hidden, field{"from", from})
		}
		h.render(w, r, http.StatusOK, "confirm", page{Title: "Confirm " + op, Nav: "deadletters", Data: d})
		return
	}

	done := 0
	if scope == "selected" {
		for _, s := range sel {
			var n int
			if op == "replay" {
				n, err = h.store.ReplayDeadLetters(ctx, s.query(false))
			} else {
				n, err = h.store.PurgeDeadLetters(ctx, s.query(true))
			}
			done += n
			if err != nil {
				break
			}
		}
	} else if op == "purge" {
		done, err = h.store.PurgeDeadLetters(ctx, q)
	} else {
		sides := []string{q.Side}
		if q.Side == "" {
			sides = []string{dialects.SideInbox, dialects.SideOutbox}
		}
		for _, side := range sides {
			qs := q
			qs.Side = side
			var n int
			n, err = h.store.ReplayDeadLetters(ctx, qs)
			done += n
			if err != nil {
				break
			}
		}
	}
	if aerr := h.audit(r, op, what, done); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	verb := map[string]string{"replay": "Replayed", "purge": "Purged"}[op]
	notice := fmt.Sprintf("%s %d dead letter(s).", verb, done)
	if strings.HasPrefix(back, h.prefix+"/deadletters/") && op == "purge" {
		back = h.prefix + "/deadletters"
	}
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	http.Redirect(w, r, back+sep+"notice="+url.QueryEscape(notice), http.StatusSeeOther)
}

// maxAuditTarget bounds the Target of an audit entry.
const maxAuditTarget = 2000

// audit appends an action to the audit table and logs it.
func (h *Handler) audit(r *http.Request, action, target string, n int) error {
	if len(target) > maxAuditTarget {
		target = target[:maxAuditTarget] + "…"
	}
	id := who(r)
	h.log.Info("durable/console: action", "user", id.user, "action", action, "target", target, "count", n)
	if err := h.store.AppendAudit(r.Context(), dialects.AuditEntry{Actor: id.user, Action: action, Target: target, Count: n}); err != nil {
		return fmt.Errorf("durable/console: audit: %w", err)
	}
	return nil
}

// ---- outbox and inbox

type outboxRowView struct {
	dialects.OutboxRow
	State, Link string
}

type outboxListData struct {
	Destination string
	Rows        []outboxRowView
	Truncated   bool
}

func (h *Handler) outboxList(w http.ResponseWriter, r *http.Request) {
	dest := strings.TrimSpace(r.URL.Query().Get("destination"))
	rows, err := h.store.ListOutbox(r.Context(), dialects.OutboxQuery{Destination: dest, Limit: listLimit + 1})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d := outboxListData{Destination: dest, Truncated: len(rows) > listLimit}
	now := h.now()
	for _, row := range rows[:min(len(rows), listLimit)] {
		if !row.SentAt.IsZero() {
			continue
		}
		link := h.prefix + "/outbox/message?" + url.Values{"destination": {row.Destination}, "id": {row.ID}}.Encode()
		d.Rows = append(d.Rows, outboxRowView{row, outboxState(&row, now), link})
	}
	h.render(w, r, http.StatusOK, "outbox", page{Title: "Outbox", Nav: "outbox", Data: d})
}

func outboxState(row *dialects.OutboxRow, now time.Time) string {
	switch {
	case row.LeaseToken != "" && row.LockedUntil.After(now):
		return "in flight"
	case row.LastError != "":
		return "retrying"
	case row.DeliverAt.After(now):
		return "scheduled"
	}
	return "pending"
}

func (h *Handler) outboxMessage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	dest, id := v.Get("destination"), v.Get("id")
	if dest == "" || id == "" {
		h.fail(w, r, badInput("destination and id are required"))
		return
	}
	rows, err := h.store.ListOutbox(r.Context(), dialects.OutboxQuery{Destination: dest, IDs: []string{id}})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(rows) == 0 {
		h.render(w, r, http.StatusNotFound, "error", page{Title: "Not found", Error: fmt.Sprintf("no outbox message %s for %s (sent, or dead-lettered)", id, dest)})
		return
	}
	o := &rows[0]
	m := messageData{Kind: "outbox message", Side: dialects.SideOutbox, Seq: o.Seq, ID: o.ID, Peer: o.Destination, PeerLabel: "Destination",
		Topic: o.Topic, Key: o.Key, Headers: headerFields(o.Headers), Payload: viewPayload(o.Payload), LastError: o.LastError}
	m.Fields = []field{{"State", outboxState(o, h.now())}, {"Attempts", strconv.Itoa(o.SendAttempt)},
		{"Created", fmtTime(o.CreatedAt)}, {"Deliver at", fmtTime(o.DeliverAt)}, {"Expires", fmtTime(o.ExpiresAt)},
		{"Leased until", fmtTime(o.LockedUntil)}, {"Sent", fmtTime(o.SentAt)}}
	h.render(w, r, http.StatusOK, "message", page{Title: "Outbox message " + o.ID, Nav: "outbox", Data: m})
}

type inboxRowView struct {
	dialects.InboxRow
	Link string
}

type inboxListData struct {
	Source, State string
	States        []string
	Rows          []inboxRowView
	Truncated     bool
}

func (h *Handler) inboxList(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	src, state := strings.TrimSpace(v.Get("source")), v.Get("state")
	switch state {
	case "":
		state = dialects.InboxStateReady
	case dialects.InboxStateReady, dialects.InboxStateRunning:
	default:
		h.fail(w, r, badInput("state %q is neither %q nor %q", state, dialects.InboxStateReady, dialects.InboxStateRunning))
		return
	}
	rows, err := h.store.ListInbox(r.Context(), dialects.InboxQuery{Source: src, State: state, Limit: listLimit + 1})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d := inboxListData{Source: src, State: state, States: []string{dialects.InboxStateReady, dialects.InboxStateRunning}, Truncated: len(rows) > listLimit}
	for _, row := range rows[:min(len(rows), listLimit)] {
		link := h.prefix + "/inbox/message?" + url.Values{"source": {row.Source}, "id": {row.ID}}.Encode()
		d.Rows = append(d.Rows, inboxRowView{row, link})
	}
	h.render(w, r, http.StatusOK, "inbox", page{Title: "Inbox", Nav: "inbox", Data: d})
}

func (h *Handler) inboxMessage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	src, id := v.Get("source"), v.Get("id")
	if id == "" {
		h.fail(w, r, badInput("id is required"))
		return
	}
	rows, err := h.store.ListInbox(r.Context(), dialects.InboxQuery{Source: src, IDs: []string{id}})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	i := slices.IndexFunc(rows, func(row dialects.InboxRow) bool { return row.Source == src })
	if i < 0 {
		h.render(w, r, http.StatusNotFound, "error", page{Title: "Not found", Error: fmt.Sprintf("no inbox message %s from %s", id, src)})
		return
	}
	o := &rows[i]
	m := messageData{Kind: "inbox message", Side: dialects.SideInbox, Seq: o.Seq, ID: o.ID, Peer: o.Source, PeerLabel: "Source",
		Topic: o.Topic, Key: o.Key, Headers: headerFields(o.Headers), Payload: viewPayload(o.Payload), Errors: o.Errors, LastError: o.LastError}
	m.Fields = []field{{"State", o.State}, {"Attempts", strconv.Itoa(o.Attempts)}, {"Created", fmtTime(o.CreatedAt)},
		{"Received", fmtTime(o.ReceivedAt)}, {"Run at", fmtTime(o.RunAt)}, {"Expires", fmtTime(o.ExpiresAt)},
		{"Locked by", o.LockedBy}, {"Leased until", fmtTime(o.LockedUntil)}, {"Handled", fmtTime(o.HandledAt)}, {"Replayed", fmtTime(o.ReplayedAt)}}
	h.render(w, r, http.StatusOK, "message", page{Title: "Inbox message " + o.ID, Nav: "inbox", Data: m})
}

// ---- pauses

type pausesData struct {
	Pauses       []dialects.Pause
	Destinations []string
}

func (h *Handler) pauses(w http.ResponseWriter, r *http.Request) {
	ps, err := h.store.ListPauses(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	stats, err := h.store.OutboxStats(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d := pausesData{Pauses: ps}
	for _, s := range stats {
		d.Destinations = append(d.Destinations, s.Destination)
	}
	h.render(w, r, http.StatusOK, "pauses", page{Title: "Pauses", Nav: "pauses", Data: d})
}

// pauseAction pauses or resumes (op) a destination or a queue (kind, name).
func (h *Handler) pauseAction(w http.ResponseWriter, r *http.Request) {
	form := r.PostForm
	op, kind, name := form.Get("op"), form.Get("kind"), strings.TrimSpace(form.Get("name"))
	if kind != dialects.PauseDestination && kind != dialects.PauseQueue {
		h.fail(w, r, badInput("kind %q is neither %q nor %q", kind, dialects.PauseDestination, dialects.PauseQueue))
		return
	}
	if name == "" {
		h.fail(w, r, badInput("a %s name is required", kind))
		return
	}
	var (
		changed bool
		err     error
	)
	switch op {
	case "pause":
		changed, err = h.store.Pause(r.Context(), dialects.Pause{Kind: kind, Name: name, PausedBy: who(r).user, Reason: strings.TrimSpace(form.Get("reason"))})
	case "resume":
		changed, err = h.store.Resume(r.Context(), kind, name)
	default:
		h.fail(w, r, badInput("unknown operation %q", op))
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	n := 0
	if changed {
		n = 1
	}
	if err := h.audit(r, op, kind+" "+name, n); err != nil {
		h.fail(w, r, err)
		return
	}
	notice := fmt.Sprintf("%s %s: %sd.", kind, name, op)
	if !changed {
		notice = fmt.Sprintf("%s %s: already %sd.", kind, name, op)
	}
	http.Redirect(w, r, h.prefix+"/pauses?notice="+url.QueryEscape(notice), http.StatusSeeOther)
}

// ---- audit

type auditData struct {
	Entries []dialects.AuditEntry
	Next    string
}

func (h *Handler) auditPage(w http.ResponseWriter, r *http.Request) {
	before, err := cursor(r.URL.Query(), "before")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	es, err := h.store.ListAudit(r.Context(), dialects.AuditQuery{BeforeID: before, Limit: h.pageLen + 1})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d := auditData{Entries: es[:min(len(es), h.pageLen)]}
	if len(es) > h.pageLen {
		d.Next = h.prefix + "/audit?before=" + strconv.FormatInt(d.Entries[len(d.Entries)-1].ID, 10)
	}
	h.render(w, r, http.StatusOK, "audit", page{Title: "Audit", Nav: "audit", Data: d})
}

// Values are f's query parameters, for the templates' hidden fields.
func (f filter) Values() url.Values { return f.values() }
