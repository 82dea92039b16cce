package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	node "github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// One instance process of `durable bench --instances`: a sender (the app's
// transactions, the outbox and its relay) or a receiver (TCP server, inbox,
// handlers), started by the bench as `durable bench-instance`. The bench
// writes an InstanceSpec as the first line of the process's stdin, then
// the commands "go" and "stop", one a line; the process answers with
// instanceEvent lines, JSON, on stdout. End of stdin stops it at once.

// Instance roles.
const (
	InstanceSender   = "sender"
	InstanceReceiver = "receiver"
)

// benchWarmups is how many warm-up messages each sender sends before the
// start: a connection to every receiver, prepared statements.
const benchWarmups = 8

// InstanceSpec is what the bench tells one instance process.
type InstanceSpec struct {
	Role     string `json:"role"` // InstanceSender or InstanceReceiver
	DSN      string `json:"dsn"`
	Schema   string `json:"schema"`   // the role's database: the sender's or the receiver's schema
	AppName  string `json:"app_name"` // application_name prefix of its connections; the role of each pool is appended
	Workload string `json:"workload"` // "w1" or "w2"
	// First and Count are the sender's share of the workload's messages:
	// indexes First … First+Count-1.
	First   int         `json:"first"`
	Count   int         `json:"count"`
	Writers int         `json:"writers"` // sender: concurrent app transactions
	PerTx   int         `json:"per_tx"`  // sender: messages per transaction
	Payload int         `json:"payload"` // bytes per message
	Secret  []byte      `json:"secret"`
	Peers   []string    `json:"peers"` // sender: every receiver's address
	Tuning  benchTuning `json:"tuning"`
}

// instanceEvent is one line an instance process prints.
type instanceEvent struct {
	Addr     string          `json:"addr,omitempty"`     // receiver: listening
	Ready    bool            `json:"ready,omitempty"`    // sender: started, warm-up enqueued
	Handled  int64           `json:"handled,omitempty"`  // receiver: handler calls of the workload so far
	Warm     int64           `json:"warm,omitempty"`     // receiver: warm-up messages handled so far
	Enqueued int64           `json:"enqueued,omitempty"` // sender: its share committed
	Report   *instanceReport `json:"report,omitempty"`   // after "stop"
	Error    string          `json:"error,omitempty"`
}

// instanceReport is what an instance measured between "go" and "stop".
type instanceReport struct {
	CPUNanos int64 `json:"cpu_ns"` // CPU time of the process (every thread)
	CPUOK    bool  `json:"cpu_ok"`
	// Commits (sender) is the commit time, Unix nanoseconds, of message
	// First+i; 0 when not committed.
	Commits []int64 `json:"commits,omitempty"`
	// Seqs and At (receiver) are its handler calls: message index and
	// time, Unix nanoseconds.
	Seqs []int32 `json:"seqs,omitempty"`
	At   []int64 `json:"at,omitempty"`
	// TransportDuplicates (receiver) is durable.inbox.received with
	// durable.status=duplicate: envelopes received again and dropped by
	// the inbox.
	TransportDuplicates int64 `json:"transport_duplicates"`
	// RelayBatches and RelayRetried (sender) are durable.relay.batch.size's
	// count and durable.relay.retried from the start signal on: the
	// batches the relay sent and the envelopes it released for a retry.
	RelayBatches int64 `json:"relay_batches"`
	RelayRetried int64 `json:"relay_retried"`
	// RelayClaims (sender) is durable.relay.claims by durable.result:
	// the claims the relay made that leased no row, fewer than the
	// limit, and the limit.
	RelayClaims ClaimCounts `json:"relay_claims"`
	Warnings    []string    `json:"warnings"`
}

// ClaimCounts are claims by result (durable.relay.claims).
type ClaimCounts struct {
	Empty int64 `json:"empty"`
	Short int64 `json:"short"`
	Full  int64 `json:"full"`
}

// relayCounters are the relay's counters the bench reports, from the
// start signal on (the warm-up's are subtracted).
type relayCounters struct {
	batches, retried int64
	claims           ClaimCounts
}

func (a relayCounters) minus(b relayCounters) relayCounters {
	return relayCounters{
		batches: a.batches - b.batches, retried: a.retried - b.retried,
		claims: ClaimCounts{Empty: a.claims.Empty - b.claims.Empty, Short: a.claims.Short - b.claims.Short,
			Full: a.claims.Full - b.claims.Full},
	}
}

// RunInstance runs one instance process of the multi-instance bench: it
// reads its InstanceSpec and commands from stdin and reports on stdout
// (see `durable bench --instances`).
func RunInstance(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewScanner(stdin)
	in.Buffer(make([]byte, 64<<10), 16<<20)
	if !in.Scan() {
		return errors.New("bench-instance: no spec on stdin")
	}
	var spec InstanceSpec
	if err := json.Unmarshal(in.Bytes(), &spec); err != nil {
		return fmt.Errorf("bench-instance: spec: %w", err)
	}
	// The commands; at the end of stdin (the bench stopped or died) the
	// channel closes and ctx ends: the process stops whatever it was doing.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmds := make(chan string, 4)
	go func() {
		defer close(cmds)
		defer cancel()
		for in.Scan() {
			cmds <- in.Text()
		}
	}()
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	emit := func(ev instanceEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
	}
	var err error
	switch spec.Role {
	case InstanceSender:
		err = runSenderInstance(ctx, &spec, cmds, emit)
	case InstanceReceiver:
		err = runReceiverInstance(ctx, &spec, cmds, emit)
	default:
		err = fmt.Errorf("unknown role %q", spec.Role)
	}
	if err != nil {
		emit(instanceEvent{Error: err.Error()})
		return fmt.Errorf("bench-instance %s: %w", spec.Role, err)
	}
	return nil
}

// instancePool opens a pool on spec's schema named for role.
func instancePool(ctx context.Context, spec *InstanceSpec, role string, conns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(spec.DSN)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{spec.Schema}.Sanitize()
	cfg.ConnConfig.RuntimeParams["application_name"] = spec.AppName + role
	cfg.MaxConns, cfg.MinConns = int32(max(conns, 1)), 0
	return pgxpool.NewWithConfig(ctx, cfg)
}

// waitCommand waits for command want; the end of stdin or of ctx is an
// error.
func waitCommand(ctx context.Context, cmds <-chan string, want string) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c, ok := <-cmds:
			if !ok {
				return fmt.Errorf("stdin closed before %q", want)
			}
			if c == want {
				return nil
			}
		}
	}
}

// runNode runs n until stop is called; stop returns Run's error.
func runNode[TTx any](ctx context.Context, n *node.Node[TTx]) (stop func() error, failed <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	fail := make(chan struct{})
	go func() {
		err := n.Run(ctx)
		if ctx.Err() == nil {
			close(fail)
		}
		errc <- err
	}()
	return func() error {
		cancel()
		return <-errc
	}, fail
}

func runReceiverInstance(ctx context.Context, spec *InstanceSpec, cmds <-chan string, emit func(instanceEvent)) (err error) {
	t := spec.Tuning
	pool, err := instancePool(ctx, spec, RoleInbox, t.ReceiverConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	d, err := postgres.New(pool, &postgres.Config{Schema: spec.Schema})
	if err != nil {
		return err
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.WithoutCancel(ctx)) }()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var (
		mu      sync.Mutex
		seqs    []int32
		at      []int64
		handled atomic.Int64
		warm    atomic.Int64
	)
	handle := func(_ context.Context, _ pgx.Tx, m *inbox.Message) error {
		now := time.Now().UnixNano()
		i := benchIndex(m.Headers)
		if i < 0 {
			warm.Add(1)
			return nil
		}
		mu.Lock()
		seqs, at = append(seqs, i), append(at, now)
		mu.Unlock()
		handled.Add(1)
		return nil
	}
	mux := inbox.NewMux[pgx.Tx]()
	for _, topic := range []string{"bench." + spec.Workload, "bench.warmup"} {
		mux.HandleFunc(topic, handle)
	}
	logs := &benchLog{skip: benchSameHostWarning}
	n, err := node.NewNode(d, &node.Config[pgx.Tx]{
		Name: "bench-receiver", Listener: ln, Secret: spec.Secret,
		Inbox: inbox.Config{
			Concurrency: t.InboxConcurrency, BatchSize: t.InboxBatchSize,
			PollInterval: benchMS(t.InboxPollMS), Inline: t.InboxInline,
		},
		DisableInline: !t.InboxInline, Handler: mux, Logger: slog.New(logs), MeterProvider: mp,
	})
	if err != nil {
		_ = ln.Close()
		return err
	}
	stop, failed := runNode(ctx, n)
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	emit(instanceEvent{Addr: ln.Addr().String()})

	// Progress until "stop": the bench waits on it.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var (
		cpu0              int64
		cpuOK             bool
		lastH, lastW      int64
		started, stopping bool
	)
	for !stopping {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-failed:
			return fmt.Errorf("node stopped: %v", stop())
		case c, ok := <-cmds:
			switch {
			case !ok:
				return errors.New("stdin closed")
			case c == "go" && !started:
				started = true
				cpu0, cpuOK = benchSelfCPU()
			case c == "stop":
				stopping = true
			}
		case <-tick.C:
			if h, w := handled.Load(), warm.Load(); h != lastH || w != lastW {
				lastH, lastW = h, w
				emit(instanceEvent{Handled: h, Warm: w})
			}
		}
	}
	cpu1, ok1 := benchSelfCPU()
	stopped = true
	if err := stop(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	rep := &instanceReport{CPUNanos: cpu1 - cpu0, CPUOK: cpuOK && ok1 && started, Warnings: logs.warnings()}
	mu.Lock()
	rep.Seqs, rep.At = seqs, at
	mu.Unlock()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.WithoutCancel(ctx), &rm); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	rep.TransportDuplicates = transportDuplicates(&rm)
	emit(instanceEvent{Report: rep})
	return nil
}

// relayCounts reads the relay's batches sent, envelopes retried and
// claims by result.
func relayCounts(rm *metricdata.ResourceMetrics) relayCounters {
	var c relayCounters
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[int64]:
				if m.Name == "durable.relay.batch.size" {
					for _, dp := range d.DataPoints {
						c.batches += int64(dp.Count)
					}
				}
			case metricdata.Sum[int64]:
				switch m.Name {
				case "durable.relay.retried":
					for _, dp := range d.DataPoints {
						c.retried += dp.Value
					}
				case "durable.relay.claims":
					for _, dp := range d.DataPoints {
						v, _ := dp.Attributes.Value("durable.result")
						switch v.AsString() {
						case "empty":
							c.claims.Empty += dp.Value
						case "short":
							c.claims.Short += dp.Value
						case "full":
							c.claims.Full += dp.Value
						}
					}
				}
			}
		}
	}
	return c
}

// transportDuplicates sums durable.inbox.received{durable.status=duplicate}.
func transportDuplicates(rm *metricdata.ResourceMetrics) int64 {
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "durable.inbox.received" {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if v, ok := dp.Attributes.Value("durable.status"); ok && v.AsString() == "duplicate" {
					n += dp.Value
				}
			}
		}
	}
	return n
}

func runSenderInstance(ctx context.Context, spec *InstanceSpec, cmds <-chan string, emit func(instanceEvent)) error {
	t := spec.Tuning
	app, err := instancePool(ctx, spec, RoleApp, t.AppConns)
	if err != nil {
		return err
	}
	defer app.Close()
	relay, err := instancePool(ctx, spec, RoleRelay, t.SenderConns)
	if err != nil {
		return err
	}
	defer relay.Close()
	d, err := postgres.New(relay, &postgres.Config{Schema: spec.Schema})
	if err != nil {
		return err
	}
	linger := benchMS(t.RelayLingerMS)
	if t.RelayLingerMS < 0 {
		linger = -1
	}
	logs := &benchLog{skip: benchSameHostWarning}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.WithoutCancel(ctx)) }()
	n, err := node.NewNode(d, &node.Config[pgx.Tx]{
		Name:          "bench-sender",
		MeterProvider: mp,
		Peers:         map[string]node.Peer{"receiver": {Addrs: spec.Peers}},
		Secret:        spec.Secret,
		Outbox:        outbox.Config{Notify: t.Notify},
		Relay: outbox.RelayConfig{
			BatchSize: t.RelayBatchSize, Linger: linger, InFlight: t.RelayInFlight,
			PollInterval: benchMS(t.RelayPollMS),
		},
		// The sender's own inbox is idle: one worker polling slowly.
		Inbox:  inbox.Config{Concurrency: 1, PollInterval: 5 * time.Second},
		Logger: slog.New(logs),
	})
	if err != nil {
		return err
	}
	stop, failed := runNode(ctx, n)
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	payload := make([]byte, spec.Payload)
	for i := range payload {
		payload[i] = byte(i)
	}
	commits := make([]int64, spec.Count)
	enqueue := func(ctx context.Context, topic string, first, count int) error {
		tx, err := app.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if first >= 0 && count == 1 {
			if _, err := tx.Exec(ctx, `INSERT INTO bench_orders (id, total) VALUES ($1, $2)`, first, 100+first%900); err != nil {
				return err
			}
		}
		msgs := make([]*outbox.Message, count)
		for i := range msgs {
			m := &outbox.Message{Destination: "receiver", Topic: topic, Payload: payload}
			if first >= 0 {
				m.Headers = map[string]string{benchSeqHeader: strconv.Itoa(first + i)}
			}
			msgs[i] = m
		}
		if err := n.Enqueue(ctx, tx, msgs...); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		if first >= 0 {
			now := time.Now().UnixNano()
			for i := range count {
				commits[first-spec.First+i] = now
			}
		}
		return nil
	}
	for range benchWarmups {
		if err := enqueue(ctx, "bench.warmup", -1, 1); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	emit(instanceEvent{Ready: true})
	if err := waitCommand(ctx, cmds, "go"); err != nil {
		return err
	}
	cpu0, ok0 := benchSelfCPU()
	var rm0 metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm0); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	counts0 := relayCounts(&rm0)

	// This sender's share, from spec.Writers goroutines.
	pctx, cancel := context.WithCancelCause(ctx)
	perTx := max(spec.PerTx, 1)
	txs := (spec.Count + perTx - 1) / perTx
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range max(spec.Writers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= txs || pctx.Err() != nil {
					return
				}
				first := spec.First + i*perTx
				count := min(perTx, spec.First+spec.Count-first)
				if err := enqueue(pctx, "bench."+spec.Workload, first, count); err != nil && pctx.Err() == nil {
					cancel(fmt.Errorf("enqueue: %w", err))
				}
			}
		})
	}
	wg.Wait()
	err = context.Cause(pctx)
	cancel(nil)
	if err != nil {
		return err
	}
	emit(instanceEvent{Enqueued: int64(spec.Count)})

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-failed:
			return fmt.Errorf("node stopped: %v", stop())
		case c, ok := <-cmds:
			if !ok {
				return errors.New("stdin closed")
			}
			if c != "stop" {
				continue
			}
			cpu1, ok1 := benchSelfCPU()
			stopped = true
			if err := stop(); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			rep := &instanceReport{CPUNanos: cpu1 - cpu0, CPUOK: ok0 && ok1, Commits: commits, Warnings: logs.warnings()}
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(context.WithoutCancel(ctx), &rm); err != nil {
				return fmt.Errorf("metrics: %w", err)
			}
			rc := relayCounts(&rm).minus(counts0)
			rep.RelayBatches, rep.RelayRetried, rep.RelayClaims = rc.batches, rc.retried, rc.claims
			emit(instanceEvent{Report: rep})
			return nil
		}
	}
}
