package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	node "github.com/durable-go/durable" // the root package; "durable" is the tests' helper
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// HotKeyResult is W4's split: the messages without a key and those
// of its one hot key, each counted from the first commit to the last of
// them handled.
type HotKeyResult struct {
	Unkeyed        int     `json:"unkeyed"`
	UnkeyedSeconds float64 `json:"unkeyed_seconds"`
	UnkeyedPerSec  float64 `json:"unkeyed_per_sec"`
	Keyed          int     `json:"keyed"`
	KeyedSeconds   float64 `json:"keyed_seconds"`
	KeyedPerSec    float64 `json:"keyed_per_sec"`
}

// benchWorkload describes one workload to run.
type benchWorkload struct {
	id       string // "w1", "w2", "w3", "w4"
	name     string // "enlisted", "bulk", "latency", "hot key"
	messages int
	writers  int           // concurrent app transactions
	perTx    int           // messages per transaction
	rate     int           // w3: messages per second
	duration time.Duration // w3
	hotKey   bool          // w4: every even-numbered message has the ordering key benchHotKey
}

// benchHotKey is W4's one ordering key.
const benchHotKey = "hot"

func (w benchWorkload) topic() string { return "bench." + w.id }

// benchTuning is the configuration of the parts under test: the knobs of
// outbox, relay, inbox and the connection pools. Zero fields take the
// library's defaults.
type benchTuning struct {
	Notify           bool    `json:"notify"`
	RelayBatchSize   int     `json:"relay_batch_size"`
	RelayLingerMS    float64 `json:"relay_linger_ms"`
	RelayInFlight    int     `json:"relay_in_flight"`
	RelayPollMS      float64 `json:"relay_poll_interval_ms"`
	InboxConcurrency int     `json:"inbox_concurrency"`
	InboxBatchSize   int     `json:"inbox_batch_size"`
	InboxPollMS      float64 `json:"inbox_poll_interval_ms"`
	InboxInline      bool    `json:"inbox_inline"`
	AppConns         int     `json:"app_pool_max_conns,omitempty"`
	SenderConns      int     `json:"sender_pool_max_conns,omitempty"`
	ReceiverConns    int     `json:"receiver_pool_max_conns,omitempty"`
}

func benchMS(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// Latency is a distribution in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// benchPercentiles summarises durations (nanoseconds), nearest rank.
func benchPercentiles(ns []int64) Latency {
	if len(ns) == 0 {
		return Latency{}
	}
	slices.Sort(ns)
	at := func(q float64) float64 {
		i := int(q*float64(len(ns))+0.999999) - 1
		i = min(max(i, 0), len(ns)-1)
		return float64(ns[i]) / 1e6
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: float64(ns[len(ns)-1]) / 1e6}
}

// Raw is the raw limit measured beside a workload.
type Raw struct {
	Kind    string  `json:"kind"`    // "single-row", "copy", "multi-row insert"
	Writers int     `json:"writers"` // concurrent writers
	Rows    int     `json:"rows"`
	Batch   int     `json:"batch"` // rows per transaction
	PerSec  float64 `json:"rows_per_sec"`
	Latency Latency `json:"latency_ms"` // per transaction
}

// Stage is the time between two consecutive stages of the messages.
type Stage struct {
	From string  `json:"from"`
	To   string  `json:"to"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
}

// Call summarises one kind of database call of the pipeline.
type Call struct {
	Op      string  `json:"op"`
	Calls   int64   `json:"calls"`
	Empty   int64   `json:"empty"` // calls that returned or changed no row
	Rows    int64   `json:"rows"`
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
}

// CPUUse is the CPU cost of the raw limit, per row, and of the
// pipeline, per message: app transactions, relay, transport, inbox and
// handlers together.
type CPUUse struct {
	RawPerRow *CPU `json:"raw_per_row"`
	// AppTxPerTx is the app's W1 transaction without durable (W1 only).
	AppTxPerTx *CPU `json:"app_tx_per_tx"`
	PerMessage *CPU `json:"pipeline_per_message"`
}

// Result is one workload on one dialect.
type Result struct {
	Dialect     string  `json:"dialect"`
	Workload    string  `json:"workload"`
	Name        string  `json:"name"`
	Messages    int     `json:"messages"`
	Writers     int     `json:"writers"`
	PerTx       int     `json:"messages_per_tx"`
	RatePerSec  int     `json:"offered_rate_per_sec"`
	DurationSec float64 `json:"duration_sec"`

	Enqueued    int64 `json:"enqueued"`
	Delivered   int64 `json:"delivered"`
	Handled     int64 `json:"handled"`
	Duplicates  int64 `json:"duplicate_handler_calls"`
	DeadLetters int64 `json:"dead_letters"`

	Seconds        float64 `json:"seconds"` // first commit → last handled
	EnqueuePerSec  float64 `json:"enqueue_per_sec"`
	EndToEndPerSec float64 `json:"end_to_end_per_sec"`
	Latency        Latency `json:"latency_ms"` // commit → handler start
	Raw            Raw     `json:"raw"`
	// Ratio is end-to-end messages/s over the raw rows/s; null for W3,
	// whose rate is fixed.
	Ratio *float64 `json:"ratio"`
	// AppTx (W1 only, else null) is the app's own transaction without
	// durable: the business row and the message as a plain row, same
	// writers. It bounds what any outbox can reach on this database;
	// RatioToAppTx is end-to-end over it.
	AppTx        *Raw     `json:"app_tx"`
	RatioToAppTx *float64 `json:"ratio_to_app_tx"`
	// HotKey splits W4's figures: its unkeyed messages, and those of its
	// one ordering key.
	HotKey *HotKeyResult `json:"hot_key,omitempty"`
	Stages []Stage       `json:"stages"`

	// CPU is what a raw row and a message cost in CPU time (Linux only).
	CPU CPUUse `json:"cpu"`
	// Calls are the pipeline's database calls, counted and timed.
	Calls []Call `json:"calls"`

	Config   benchTuning `json:"config"`
	Warnings []string    `json:"warnings"`
}

// benchStageNames names the stages for the breakdown.
var benchStageNames = [benchStages]string{
	bstCommit: "commit", bstClaim: "relay claim", bstReceived: "inbox received", bstStored: "inbox stored",
	bstAcked: "relay ack", bstWorker: "worker claim", bstHandler: "handler start", bstDone: "handler committed",
}

// benchPath is the order the stages follow on the way to the handler (the
// ACK runs beside it, after the store).
var benchPath = []int{bstCommit, bstClaim, bstReceived, bstStored, bstWorker, bstHandler, bstDone}

// benchInlinePath is benchPath when the inbox handles inline: the handler
// runs in the Deliver transaction, whose commit stores the message and
// ends its handler's transaction at once.
var benchInlinePath = []int{bstCommit, bstClaim, bstReceived, bstHandler, bstDone}

// benchLog counts the warnings and errors the parts log during a run and
// keeps the first few; the bench reports them rather than printing them.
type benchLog struct {
	// skip, when set, leaves out the records whose message starts with it.
	skip string
	mu   sync.Mutex
	n    int
	kept []string
}

func (l *benchLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *benchLog) Handle(_ context.Context, r slog.Record) error {
	if l.skip != "" && strings.HasPrefix(r.Message, l.skip) {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if len(l.kept) < 5 {
		s := r.Message
		r.Attrs(func(a slog.Attr) bool {
			s += " " + a.String()
			return true
		})
		l.kept = append(l.kept, s)
	}
	return nil
}
func (l *benchLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *benchLog) WithGroup(string) slog.Handler      { return l }

func (l *benchLog) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]string{}, l.kept...)
	if l.n > len(l.kept) {
		out = append(out, fmt.Sprintf("… %d more", l.n-len(l.kept)))
	}
	return out
}

// benchRawSingle runs rows single-row insert-and-commit statements from
// writers goroutines.
func benchRawSingle(ctx context.Context, writers, rows int, payload []byte, insert func(context.Context, []byte) error) (Raw, error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		lat  = make([]int64, 0, rows)
		errs = make(chan error, writers)
	)
	start := time.Now()
	for range writers {
		wg.Go(func() {
			mine := make([]int64, 0, rows/writers+1)
			for next.Add(1) <= int64(rows) && ctx.Err() == nil {
				t := time.Now()
				if err := insert(ctx, payload); err != nil {
					errs <- err
					return
				}
				mine = append(mine, int64(time.Since(t)))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return Raw{}, fmt.Errorf("raw single-row insert: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Raw{}, err
	}
	return Raw{Kind: "single-row", Writers: writers, Rows: rows, Batch: 1,
		PerSec: float64(rows) / elapsed.Seconds(), Latency: benchPercentiles(lat)}, nil
}

// benchRawBatch inserts rows in transactions of batch rows, one after the
// other.
func benchRawBatch(ctx context.Context, kind string, rows, batch int, payload []byte, insert func(context.Context, int, []byte) error) (Raw, error) {
	lat := make([]int64, 0, rows/batch+1)
	start := time.Now()
	for done := 0; done < rows; done += batch {
		n := min(batch, rows-done)
		t := time.Now()
		if err := insert(ctx, n, payload); err != nil {
			return Raw{}, fmt.Errorf("raw batch insert: %w", err)
		}
		lat = append(lat, int64(time.Since(t)))
	}
	elapsed := time.Since(start)
	return Raw{Kind: kind, Writers: 1, Rows: rows, Batch: batch,
		PerSec: float64(rows) / elapsed.Seconds(), Latency: benchPercentiles(lat)}, nil
}

// benchRunWorkload measures w on env: the raw limit first, on the idle
// database, then the pipeline: a sender node (outbox and relay) and a
// receiver node (TCP server, inbox, workers) in this process, connected
// over 127.0.0.1.
func benchRunWorkload[TTx any](ctx context.Context, env *benchEnv[TTx], p *benchProbe, dialect string, w benchWorkload, t benchTuning, payload []byte) (res Result, err error) {
	res = Result{Dialect: dialect, Workload: w.id, Name: w.name, Messages: w.messages, Writers: w.writers,
		PerTx: w.perTx, RatePerSec: w.rate, DurationSec: w.duration.Seconds(), Config: t}

	// The raw limit, in this run, on the sender's database.
	env.warm(ctx, w.writers)
	cpu0 := benchSampleCPU(ctx, env.backends)
	switch w.id {
	case "w2", "w4":
		kind := "copy"
		if dialect == "sqlite" {
			kind = "multi-row insert"
		}
		res.Raw, err = benchRawBatch(ctx, kind, w.messages, w.perTx, payload, env.rawBatch)
	case "w3":
		// The latency of one commit at a time: what the pipeline adds to.
		res.Raw, err = benchRawSingle(ctx, 1, min(w.messages, 1000), payload, env.rawRow)
	default:
		res.Raw, err = benchRawSingle(ctx, w.writers, w.messages, payload, env.rawRow)
	}
	if err != nil {
		return res, err
	}
	res.CPU.RawPerRow = benchCPUPer(cpu0, benchSampleCPU(ctx, env.backends), res.Raw.Rows)
	if w.id == "w1" {
		cpuApp := benchSampleCPU(ctx, env.backends)
		var id atomic.Int64
		id.Store(-1)
		app, err := benchRawSingle(ctx, w.writers, w.messages, payload, func(ctx context.Context, payload []byte) error {
			tx, err := env.begin(ctx)
			if err != nil {
				return err
			}
			// Negative ids: the workload's orders use 0 and up.
			if err = env.business(ctx, tx, id.Add(-1)); err == nil {
				err = env.plainMessage(ctx, tx, payload)
			}
			if err == nil {
				err = env.commit(ctx, tx)
			}
			if err != nil {
				env.rollback(ctx, tx)
			}
			return err
		})
		if err != nil {
			return res, fmt.Errorf("app transaction: %w", err)
		}
		app.Kind = "app transaction without durable"
		res.AppTx = &app
		res.CPU.AppTxPerTx = benchCPUPer(cpuApp, benchSampleCPU(ctx, env.backends), app.Rows)
	}

	// The two services.
	logs := &benchLog{}
	logger := slog.New(logs)
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return res, fmt.Errorf("listen: %w", err)
	}
	icfg := inbox.Config{
		Concurrency:  t.InboxConcurrency,
		BatchSize:    t.InboxBatchSize,
		PollInterval: benchMS(t.InboxPollMS),
		Inline:       t.InboxInline,
	}
	handle := func(_ context.Context, tx TTx, m *inbox.Message) error {
		p.handle(tx, m.Headers)
		return nil
	}
	mux := inbox.NewMux[TTx]()
	for _, topic := range []string{w.topic(), "bench.warmup"} {
		mux.HandleFunc(topic, handle)
	}
	receiver, err := node.NewNode(env.receiver, &node.Config[TTx]{
		Name: "bench-receiver", Listener: ln, Secret: secret, Inbox: icfg, DisableInline: !t.InboxInline, Handler: mux, Logger: logger,
	})
	if err != nil {
		_ = ln.Close()
		return res, err
	}
	linger := benchMS(t.RelayLingerMS)
	if t.RelayLingerMS < 0 {
		linger = -1
	}
	sender, err := node.NewNode(env.sender, &node.Config[TTx]{
		Name:   "bench-sender",
		Peers:  map[string]node.Peer{"receiver": {Addr: ln.Addr().String()}},
		Secret: secret,
		Outbox: outbox.Config{Notify: t.Notify},
		Relay: outbox.RelayConfig{
			BatchSize: t.RelayBatchSize, Linger: linger, InFlight: t.RelayInFlight,
			PollInterval: benchMS(t.RelayPollMS),
		},
		// The sender's own inbox is idle: one worker polling slowly.
		Inbox:  inbox.Config{Concurrency: 1, PollInterval: 5 * time.Second},
		Logger: logger,
	})
	if err != nil {
		_ = ln.Close()
		return res, err
	}
	runCtx, stop := context.WithCancel(ctx)
	runErrs := make(chan error, 2)
	var nodes sync.WaitGroup
	// The parts' goroutines inherit a pprof label naming their side, so that
	// a --cpuprofile tells the sender's relay from the receiver's inbox
	// (go tool pprof -tagfocus side=receiver).
	for side, run := range map[string]func(context.Context) error{"receiver": receiver.Run, "sender": sender.Run} {
		nodes.Go(func() {
			pprof.Do(runCtx, pprof.Labels("side", side), func(ctx context.Context) {
				if err := run(ctx); err != nil {
					runErrs <- err
					stop()
				}
			})
		})
	}
	defer func() {
		stop()
		nodes.Wait()
		close(runErrs)
		if rerr := <-runErrs; rerr != nil && err == nil {
			err = rerr
		}
		res.Warnings = logs.warnings()
	}()

	// Warm up: a connection to the peer, prepared statements, the workers.
	const warmups = 16
	if err := benchEnqueue(runCtx, env, sender, "bench.warmup", false, -1, warmups, payload, nil); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	if err := benchWait(runCtx, "the warm-up", func() int64 { return p.warm.Load() }, warmups, nil); err != nil {
		return res, err
	}

	// The workload.
	cpu1 := benchSampleCPU(runCtx, env.backends)
	var perr error
	pprof.Do(runCtx, pprof.Labels("side", "app"), func(ctx context.Context) {
		perr = benchProduce(ctx, env, sender, p, w, payload)
	})
	if perr != nil {
		return res, perr
	}
	if err := benchWait(runCtx, "the messages", func() int64 { return p.count[bstDone].Load() }, int64(w.messages), p.done); err != nil {
		return res, err
	}
	// The last ACKs are recorded just after the last store.
	_ = benchWait(runCtx, "the acknowledgements", func() int64 { return p.count[bstAcked].Load() }, int64(w.messages), nil)
	res.CPU.PerMessage = benchCPUPer(cpu1, benchSampleCPU(runCtx, env.backends), w.messages)

	st, err := receiver.Inbox().Stats(runCtx)
	if err != nil {
		return res, fmt.Errorf("inbox stats: %w", err)
	}
	res.Enqueued = p.count[bstCommit].Load()
	res.Delivered = p.count[bstStored].Load()
	res.Handled = p.count[bstDone].Load()
	res.Duplicates = p.dups.Load()
	res.DeadLetters = st.Dead
	benchSummarise(&res, p)
	return res, nil
}

// benchEnqueue commits one transaction holding a business row (when id is
// not negative) and n messages; first is the index of the first message in
// the run (-1: not counted), recorded in the probe at commit. With hot, the
// messages of even index carry the ordering key benchHotKey.
func benchEnqueue[TTx any](ctx context.Context, env *benchEnv[TTx], n *node.Node[TTx], topic string, hot bool, first, count int, payload []byte, p *benchProbe) error {
	tx, err := env.begin(ctx)
	if err != nil {
		return err
	}
	if first >= 0 && count == 1 {
		if err := env.business(ctx, tx, int64(first)); err != nil {
			env.rollback(ctx, tx)
			return err
		}
	}
	msgs := make([]*outbox.Message, count)
	for i := range msgs {
		m := &outbox.Message{Destination: "receiver", Topic: topic, Payload: payload}
		if first >= 0 {
			m.Headers = map[string]string{benchSeqHeader: strconv.Itoa(first + i)}
		}
		if hot && (first+i)%2 == 0 {
			m.Key = benchHotKey
		}
		msgs[i] = m
	}
	if err := n.Enqueue(ctx, tx, msgs...); err != nil {
		env.rollback(ctx, tx)
		return err
	}
	if err := env.commit(ctx, tx); err != nil {
		env.rollback(ctx, tx)
		return err
	}
	if p != nil && first >= 0 {
		t := p.now()
		for i := range count {
			p.stamp(bstCommit, int32(first+i), t)
		}
	}
	return nil
}

// benchProduce runs the app side of w: its transactions, at full speed from
// w.writers goroutines, or paced at w.rate.
func benchProduce[TTx any](ctx context.Context, env *benchEnv[TTx], n *node.Node[TTx], p *benchProbe, w benchWorkload, payload []byte) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	txs := (w.messages + w.perTx - 1) / w.perTx
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	one := func(i int) {
		first := i * w.perTx
		count := min(w.perTx, w.messages-first)
		if err := benchEnqueue(ctx, env, n, w.topic(), w.hotKey, first, count, payload, p); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("enqueue: %w", err))
		}
	}
	if w.rate > 0 {
		// Paced: transaction i starts at i/rate, whatever the others do, so
		// that a slow commit does not lower the offered rate.
		interval := time.Second / time.Duration(w.rate)
		sem := make(chan struct{}, max(w.writers, 1))
		start := time.Now()
		for i := range txs {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				one(i)
			})
		}
	} else {
		for range max(w.writers, 1) {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= txs || ctx.Err() != nil {
						return
					}
					one(i)
				}
			})
		}
	}
	wg.Wait()
	return context.Cause(ctx)
}

// benchStall is how long the count may stand still before the bench gives
// up waiting.
const benchStall = 60 * time.Second

// benchWait waits until count reaches want (or done is closed), failing when
// it makes no progress for benchStall.
func benchWait(ctx context.Context, what string, count func() int64, want int64, done <-chan struct{}) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	last, since := count(), time.Now()
	for {
		c := count()
		if c >= want {
			return nil
		}
		if c != last {
			last, since = c, time.Now()
		} else if time.Since(since) > benchStall {
			return fmt.Errorf("waiting for %s: %d of %d after no progress for %s", what, c, want, benchStall)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return nil
		case <-tick.C:
		}
	}
}

// benchSummarise computes the rates, the latency and the stage breakdown
// from the probe's stamps.
func benchSummarise(res *Result, p *benchProbe) {
	var firstCommit, lastCommit, lastDone int64 = -1, 0, 0
	lat := make([]int64, 0, p.n)
	for i := range p.n {
		c := p.t[bstCommit][i].Load()
		if c == 0 {
			continue
		}
		if firstCommit < 0 || c < firstCommit {
			firstCommit = c
		}
		lastCommit = max(lastCommit, c)
		lastDone = max(lastDone, p.t[bstDone][i].Load())
		if h := p.t[bstHandler][i].Load(); h != 0 {
			lat = append(lat, h-c)
		}
	}
	if firstCommit > 0 && lastDone > firstCommit {
		res.Seconds = float64(lastDone-firstCommit) / 1e9
		res.EndToEndPerSec = float64(res.Handled) / res.Seconds
	}
	if lastCommit > firstCommit {
		res.EnqueuePerSec = float64(res.Enqueued) / (float64(lastCommit-firstCommit) / 1e9)
	}
	res.Latency = benchPercentiles(lat)
	if res.Workload == "w4" && firstCommit > 0 {
		h := &HotKeyResult{}
		var lastKeyed, lastUnkeyed int64
		for i := range p.n {
			d := p.t[bstDone][i].Load()
			if d == 0 {
				continue
			}
			if i%2 == 0 {
				h.Keyed++
				lastKeyed = max(lastKeyed, d)
			} else {
				h.Unkeyed++
				lastUnkeyed = max(lastUnkeyed, d)
			}
		}
		if lastKeyed > firstCommit {
			h.KeyedSeconds = float64(lastKeyed-firstCommit) / 1e9
			h.KeyedPerSec = float64(h.Keyed) / h.KeyedSeconds
		}
		if lastUnkeyed > firstCommit {
			h.UnkeyedSeconds = float64(lastUnkeyed-firstCommit) / 1e9
			h.UnkeyedPerSec = float64(h.Unkeyed) / h.UnkeyedSeconds
		}
		res.HotKey = h
	}
	if res.Workload != "w3" && res.Workload != "w4" && res.Raw.PerSec > 0 {
		r := res.EndToEndPerSec / res.Raw.PerSec
		res.Ratio = &r
	}
	if res.AppTx != nil && res.AppTx.PerSec > 0 {
		r := res.EndToEndPerSec / res.AppTx.PerSec
		res.RatioToAppTx = &r
	}
	stage := func(from, to int) Stage {
		d := make([]int64, 0, p.n)
		for i := range p.n {
			a, b := p.t[from][i].Load(), p.t[to][i].Load()
			if a != 0 && b != 0 {
				d = append(d, b-a)
			}
		}
		l := benchPercentiles(d)
		return Stage{From: benchStageNames[from], To: benchStageNames[to], P50: l.P50, P99: l.P99}
	}
	res.Calls = res.Calls[:0]
	for k := range p.ops {
		o := &p.ops[k]
		c := Call{Op: benchOpNames[k], Calls: o.calls.Load(), Empty: o.empty.Load(), Rows: o.rows.Load(),
			TotalMS: float64(o.nanos.Load()) / 1e6}
		if c.Calls > 0 {
			c.MeanMS = c.TotalMS / float64(c.Calls)
		}
		res.Calls = append(res.Calls, c)
	}
	res.Stages = res.Stages[:0]
	path := benchPath
	if res.Config.InboxInline {
		path = benchInlinePath
	}
	for i := 1; i < len(path); i++ {
		res.Stages = append(res.Stages, stage(path[i-1], path[i]))
	}
	res.Stages = append(res.Stages, stage(bstStored, bstAcked))
}
