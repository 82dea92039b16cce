package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/migrations"
)

// The multi-instance bench: W1 and W2 with N sender processes on the
// sender's database and N receiver processes on the receiver's, for each N
// of Options.Instances, on Postgres. Each process is this binary again
// (`durable bench-instance`, see RunInstance).

// InstancesReport is what `durable bench --instances --json` prints.
type InstancesReport struct {
	Machine   Machine             `json:"machine"`
	Workloads []InstancesWorkload `json:"workloads"`
}

// InstancesWorkload is one workload at every instance count, with the raw
// limit of the same run beside it.
type InstancesWorkload struct {
	Dialect  string `json:"dialect"`
	Workload string `json:"workload"`
	Name     string `json:"name"`
	Messages int    `json:"messages"`
	Raw      Raw    `json:"raw"`
	// AppTx (W1) is the app's own transaction without durable, as in the
	// single-process bench.
	AppTx *Raw           `json:"app_tx"`
	Rows  []InstancesRow `json:"rows"`
}

// InstancesRow is one workload run with N senders and N receivers.
type InstancesRow struct {
	Instances int `json:"instances"`
	Messages  int `json:"messages"`
	// WritersPerSender is each sender's concurrent app transactions: the
	// workload's writers divided among the senders.
	WritersPerSender int     `json:"writers_per_sender"`
	Seconds          float64 `json:"seconds"` // start signal → last handler call
	EndToEndPerSec   float64 `json:"end_to_end_per_sec"`
	// OfRaw is EndToEndPerSec over the raw limit's rows/s (W1: over the
	// app's own transaction).
	OfRaw *float64 `json:"of_raw"`
	// CPU per message: every instance process (Go) and the Postgres
	// backends of their connections, by role.
	CPU *CPU `json:"cpu_per_message"`
	// Busy is the CPU the run used (instances and Postgres backends) over
	// the machine's: wall time × CPUs.
	Busy      *float64     `json:"cpu_busy"`
	Processes []ProcessCPU `json:"processes"`
	Latency   Latency      `json:"latency_ms"` // enqueue commit → handler call
	Handled   int64        `json:"handled"`    // distinct messages whose handler ran
	// HandledInDB is the receiver's inbox rows of the workload in state
	// handled.
	HandledInDB int64 `json:"handled_in_db"`
	// TransportDuplicates is the envelopes the receivers got again and
	// dropped (durable.inbox.received{durable.status=duplicate}).
	TransportDuplicates int64 `json:"transport_duplicates"`
	// RelayBatches is the batches the senders' relays sent
	// (durable.relay.batch.size's count); MessagesPerBatch the messages
	// over it. RelayRetried is the envelopes released for a retry.
	RelayBatches     int64   `json:"relay_batches"`
	MessagesPerBatch float64 `json:"messages_per_relay_batch"`
	RelayRetried     int64   `json:"relay_retried"`
	// RelayClaims is the senders' claims by result
	// (durable.relay.claims); ClaimsPerMessage all of them over the
	// messages.
	RelayClaims      ClaimCounts `json:"relay_claims"`
	ClaimsPerMessage float64     `json:"claims_per_message"`
	// DuplicateHandlerCalls is the handler calls after a message's first.
	DuplicateHandlerCalls int64       `json:"duplicate_handler_calls"`
	DeadLetters           int64       `json:"dead_letters"`
	Config                benchTuning `json:"config"`
	Warnings              []string    `json:"warnings"`
}

// ProcessCPU is one instance process's CPU between the start and the end.
type ProcessCPU struct {
	Role       string  `json:"role"`
	Index      int     `json:"index"`
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	Messages   int     `json:"messages"` // enqueued (sender) or handler calls (receiver)
}

// InstancesWorkloads are the workloads the multi-instance bench runs, of
// those Options.Workloads names.
func (o *Options) InstancesWorkloads() []string {
	var out []string
	for _, w := range []string{"w1", "w2"} {
		if containsString(o.Workloads, w) {
			out = append(out, w)
		}
	}
	return out
}

// RunInstances runs W1 and W2 (those of o.Workloads) with each instance
// count of o.Instances, starting the instance processes from exe (this
// binary: `exe bench-instance`). Postgres only. Errors opening the server
// are *dsn.Error.
func RunInstances(ctx context.Context, o *Options, exe string) (*InstancesReport, error) {
	rep := &InstancesReport{Machine: Machine{
		CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		LoadBefore: Load(), Started: time.Now().UTC().Truncate(time.Second), Command: o.Command,
	}}
	dsnStr := o.DSN
	if dsnStr == "" {
		dsnStr = benchDefaultDSN
	}
	sctx, cancel := o.step(ctx)
	pg, err := benchOpenPostgres(sctx, dsnStr)
	cancel()
	if err != nil {
		return nil, err
	}
	defer pg.close()
	rep.Machine.Postgres = pg.version
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	payload := make([]byte, o.Payload)
	_, _ = rand.Read(payload)
	for _, w := range o.workloadList() {
		if w.id != "w1" && w.id != "w2" {
			continue
		}
		t := benchTuned(migrations.Postgres, o, w)
		wr := InstancesWorkload{Dialect: migrations.Postgres, Workload: w.id, Name: w.name, Messages: w.messages}
		progress("measuring the raw limit of %s…", strings.ToUpper(w.id))
		if err := instancesRaw(ctx, o, pg, w, t, payload, &wr); err != nil {
			if ctx.Err() != nil {
				return nil, ErrInterrupted
			}
			return nil, fmt.Errorf("postgres %s raw limit: %w", w.id, err)
		}
		for _, n := range o.Instances {
			progress("running %s %s with %d instances…", strings.ToUpper(w.id), w.name, n)
			row, err := runInstancesOnce(ctx, o, pg, exe, dsnStr, w, n)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ErrInterrupted
				}
				return nil, fmt.Errorf("postgres %s, %d instances: %w", w.id, n, err)
			}
			limit := wr.Raw.PerSec
			if wr.AppTx != nil {
				limit = wr.AppTx.PerSec
			}
			if limit > 0 && row.EndToEndPerSec > 0 {
				r := row.EndToEndPerSec / limit
				row.OfRaw = &r
			}
			wr.Rows = append(wr.Rows, *row)
		}
		rep.Workloads = append(rep.Workloads, wr)
	}
	progress("")
	rep.Machine.LoadAfter = Load()
	return rep, nil
}

// instancesRaw measures the raw limit of w (and for W1 the app's own
// transaction) on a fresh schema, as the single-process bench does.
func instancesRaw(ctx context.Context, o *Options, pg *benchPG, w benchWorkload, t benchTuning, payload []byte, wr *InstancesWorkload) error {
	sctx, cancel := o.step(ctx)
	env, err := pg.env(sctx, w.id+"_raw", newBenchProbe(0), t)
	cancel()
	if err != nil {
		return err
	}
	defer env.close()
	env.warm(ctx, w.writers)
	if w.id == "w2" {
		wr.Raw, err = benchRawBatch(ctx, "copy", w.messages, w.perTx, payload, env.rawBatch)
		return err
	}
	if wr.Raw, err = benchRawSingle(ctx, w.writers, w.messages, payload, env.rawRow); err != nil {
		return err
	}
	var id int64
	var mu sync.Mutex
	app, err := benchRawSingle(ctx, w.writers, w.messages, payload, func(ctx context.Context, payload []byte) error {
		mu.Lock()
		id--
		mine := id
		mu.Unlock()
		tx, err := env.begin(ctx)
		if err != nil {
			return err
		}
		if err = env.business(ctx, tx, mine); err == nil {
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
		return fmt.Errorf("app transaction: %w", err)
	}
	app.Kind = "app transaction without durable"
	wr.AppTx = &app
	return nil
}

// benchChild is one instance process.
type benchChild struct {
	role   string
	index  int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *tailBuffer
	done   chan struct{} // closed when the process was reaped
	err    error         // its exit, once done
}

// childEvent is a line a child printed, or its end (eof).
type childEvent struct {
	child *benchChild
	ev    instanceEvent
	eof   bool
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

// startChild starts exe bench-instance with spec, its events sent to
// events.
// After quit is closed, its output is read and dropped.
func startChild(exe string, spec *InstanceSpec, index int, events chan<- childEvent, quit <-chan struct{}) (*benchChild, error) {
	c := &benchChild{role: spec.Role, index: index, stderr: &tailBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(exe, "bench-instance")
	c.cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", exe, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 256<<20)
		send := func(e childEvent) {
			select {
			case events <- e:
			case <-quit:
			}
		}
		for sc.Scan() {
			var ev instanceEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev.Error = fmt.Sprintf("unreadable line %q: %v", sc.Text(), err)
			}
			send(childEvent{child: c, ev: ev})
		}
		_, _ = io.Copy(io.Discard, stdout)
		c.err = c.cmd.Wait()
		close(c.done)
		send(childEvent{child: c, eof: true})
	}()
	b, _ := json.Marshal(spec)
	if _, err := c.stdin.Write(append(b, '\n')); err != nil {
		return c, fmt.Errorf("spec to %s %d: %w", c.role, index, err)
	}
	return c, nil
}

func (c *benchChild) name() string { return fmt.Sprintf("%s %d", c.role, c.index) }

func (c *benchChild) send(cmd string) error {
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	return nil
}

// instancesRun is the parent's state of one run: its children and what
// they reported.
type instancesRun struct {
	events    chan childEvent
	children  []*benchChild
	addrs     map[*benchChild]string
	ready     map[*benchChild]bool
	handled   map[*benchChild]int64
	warm      map[*benchChild]int64
	enqueued  map[*benchChild]int64
	reports   map[*benchChild]*instanceReport
	lastMove  time.Time
	stallTime time.Duration
}

// apply records one event; a child's error or early end is an error.
func (r *instancesRun) apply(e childEvent) error {
	c := e.child
	switch {
	case e.eof:
		if r.reports[c] == nil {
			return fmt.Errorf("%s ended (%v) before its report; stderr: %s", c.name(), c.err, c.stderr.String())
		}
		return nil
	case e.ev.Error != "":
		return fmt.Errorf("%s: %s", c.name(), e.ev.Error)
	}
	r.lastMove = time.Now()
	if e.ev.Addr != "" {
		r.addrs[c] = e.ev.Addr
	}
	if e.ev.Ready {
		r.ready[c] = true
	}
	if e.ev.Handled > 0 || e.ev.Warm > 0 {
		r.handled[c], r.warm[c] = e.ev.Handled, e.ev.Warm
	}
	if e.ev.Enqueued > 0 {
		r.enqueued[c] = e.ev.Enqueued
	}
	if e.ev.Report != nil {
		r.reports[c] = e.ev.Report
	}
	return nil
}

// wait applies events until cond holds, failing when none comes for the
// stall time.
func (r *instancesRun) wait(ctx context.Context, what string, cond func() bool) error {
	r.lastMove = time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-r.events:
			if err := r.apply(e); err != nil {
				return err
			}
		case <-tick.C:
			if time.Since(r.lastMove) > r.stallTime {
				return fmt.Errorf("waiting for %s: no progress for %s", what, r.stallTime)
			}
		}
	}
	return nil
}

func sumOf(m map[*benchChild]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// runInstancesOnce runs w with n senders and n receivers on fresh schemas.
func runInstancesOnce(ctx context.Context, o *Options, pg *benchPG, exe, dsnStr string, w benchWorkload, n int) (row *InstancesRow, err error) {
	sName := fmt.Sprintf("durable_bench_%s_%s_n%d_sender", pg.run, w.id, n)
	rName := fmt.Sprintf("durable_bench_%s_%s_n%d_receiver", pg.run, w.id, n)
	defer pg.drop(ctx, sName)
	defer pg.drop(ctx, rName)
	sctx, cancel := o.step(ctx)
	err = pg.create(sctx, sName)
	if err == nil {
		err = pg.create(sctx, rName)
	}
	cancel()
	if err != nil {
		return nil, err
	}

	// Each sender runs its share of the workload's writers; the pools are
	// sized for one instance of n, so that 4 + 4 processes stay within a
	// default max_connections of 100.
	wi := w
	wi.writers = (w.writers + n - 1) / n
	t := benchTuned(migrations.Postgres, o, wi)
	t.AppConns = wi.writers + 1
	if o.SenderConns == 0 {
		t.SenderConns = t.RelayInFlight + 1
	}
	if o.ReceiverConns == 0 {
		t.ReceiverConns = t.InboxConcurrency + 2
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)

	run := &instancesRun{
		events: make(chan childEvent, 64), addrs: map[*benchChild]string{}, ready: map[*benchChild]bool{},
		handled: map[*benchChild]int64{}, warm: map[*benchChild]int64{}, enqueued: map[*benchChild]int64{},
		reports: map[*benchChild]*instanceReport{}, stallTime: benchStall,
	}
	quit := make(chan struct{})
	defer func() {
		// Every child is reaped: asked to end (end of stdin), killed when
		// the run failed or it does not end in time.
		close(quit)
		for _, c := range run.children {
			if err != nil {
				_ = c.cmd.Process.Kill()
			}
			_ = c.stdin.Close()
		}
		for _, c := range run.children {
			t := time.NewTimer(15 * time.Second)
			select {
			case <-c.done:
			case <-t.C:
				_ = c.cmd.Process.Kill()
				<-c.done
			}
			t.Stop()
		}
	}()

	spec := InstanceSpec{DSN: dsnStr, AppName: pg.appName(""), Workload: w.id, Writers: wi.writers,
		PerTx: w.perTx, Payload: o.Payload, Secret: secret, Tuning: t}
	var receivers, senders []*benchChild
	for i := range n {
		s := spec
		s.Role, s.Schema = InstanceReceiver, rName
		c, err := startChild(exe, &s, i, run.events, quit)
		if c != nil {
			run.children = append(run.children, c)
			receivers = append(receivers, c)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := run.wait(ctx, "the receivers' addresses", func() bool { return len(run.addrs) == n }); err != nil {
		return nil, err
	}
	var peers []string
	for _, c := range receivers {
		peers = append(peers, run.addrs[c])
	}
	// The messages in n contiguous shares, whole transactions each.
	for i := range n {
		s := spec
		s.Role, s.Schema, s.Peers = InstanceSender, sName, peers
		s.First = senderFirst(w, n, i)
		s.Count = senderFirst(w, n, i+1) - s.First
		c, err := startChild(exe, &s, i, run.events, quit)
		if c != nil {
			run.children = append(run.children, c)
			senders = append(senders, c)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := run.wait(ctx, "the senders' warm-up", func() bool {
		return len(run.ready) == n && sumOf(run.warm) >= int64(n*benchWarmups)
	}); err != nil {
		return nil, err
	}

	// The run: from the start signal to the last handler call.
	cpu0 := benchSampleCPU(ctx, pg.backends)
	start := time.Now()
	for _, c := range append(append([]*benchChild{}, receivers...), senders...) {
		if err := c.send("go"); err != nil {
			return nil, err
		}
	}
	if err := run.wait(ctx, "the messages", func() bool { return sumOf(run.handled) >= int64(w.messages) }); err != nil {
		return nil, err
	}
	// Handler calls are counted before their transaction commits: wait
	// for the inbox to hold every message handled.
	var inDB int64
	count := `SELECT count(*) FROM ` + pgx.Identifier{rName, "durable_inbox"}.Sanitize() + ` WHERE topic = $1 AND state = 'handled'`
	deadline := time.Now().Add(benchStall)
	for {
		if err := pg.admin.QueryRow(ctx, count, w.topic()).Scan(&inDB); err != nil {
			return nil, fmt.Errorf("count handled: %w", err)
		}
		if inDB >= int64(w.messages) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the inbox holds %d of %d messages handled after %s", inDB, w.messages, benchStall)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	cpu1 := benchSampleCPU(ctx, pg.backends)
	wall := time.Since(start)
	for _, c := range run.children {
		if err := c.send("stop"); err != nil {
			return nil, err
		}
	}
	if err := run.wait(ctx, "the reports", func() bool { return len(run.reports) == 2*n }); err != nil {
		return nil, err
	}

	row = &InstancesRow{Instances: n, Messages: w.messages, WritersPerSender: wi.writers, HandledInDB: inDB, Config: t}
	commits := make([]int64, w.messages)
	first := make([]int64, w.messages)
	calls := make([]int32, w.messages)
	var goNanos int64
	cpuOK := cpu0.ok && cpu1.ok
	for _, c := range run.children {
		r := run.reports[c]
		cpuOK = cpuOK && r.CPUOK
		goNanos += r.CPUNanos
		p := ProcessCPU{Role: c.role, Index: c.index, PID: c.cmd.Process.Pid, CPUSeconds: float64(r.CPUNanos) / 1e9}
		for _, wn := range r.Warnings {
			row.Warnings = append(row.Warnings, c.name()+": "+wn)
		}
		if c.role == InstanceSender {
			s := 0
			base := senderFirst(w, n, c.index)
			for i, ts := range r.Commits {
				if ts != 0 {
					s++
				}
				if k := base + i; k < w.messages {
					commits[k] = ts
				}
			}
			p.Messages = s
			row.RelayBatches += r.RelayBatches
			row.RelayRetried += r.RelayRetried
			row.RelayClaims.Empty += r.RelayClaims.Empty
			row.RelayClaims.Short += r.RelayClaims.Short
			row.RelayClaims.Full += r.RelayClaims.Full
		} else {
			row.TransportDuplicates += r.TransportDuplicates
			p.Messages = len(r.Seqs)
			for i, seq := range r.Seqs {
				if seq < 0 || int(seq) >= w.messages {
					continue
				}
				calls[seq]++
				if first[seq] == 0 || r.At[i] < first[seq] {
					first[seq] = r.At[i]
				}
			}
		}
		row.Processes = append(row.Processes, p)
	}
	var last int64
	lat := make([]int64, 0, w.messages)
	for i := range w.messages {
		if calls[i] > 0 {
			row.Handled++
			row.DuplicateHandlerCalls += int64(calls[i] - 1)
			last = max(last, first[i])
			if commits[i] != 0 {
				lat = append(lat, first[i]-commits[i])
			}
		}
	}
	row.Latency = benchPercentiles(lat)
	if row.RelayBatches > 0 {
		row.MessagesPerBatch = float64(w.messages) / float64(row.RelayBatches)
	}
	if c := row.RelayClaims; w.messages > 0 {
		row.ClaimsPerMessage = float64(c.Empty+c.Short+c.Full) / float64(w.messages)
	}
	if last > start.UnixNano() {
		row.Seconds = float64(last-start.UnixNano()) / 1e9
		row.EndToEndPerSec = float64(row.Handled) / row.Seconds
	}
	if cpuOK {
		c := benchCPUPer(cpu0, cpu1, w.messages)
		// benchCPUPer's Go part is this process, which only waited:
		// the instances' own CPU replaces it.
		c.Go = float64(goNanos) / 1e3 / float64(w.messages)
		row.CPU = c
		total := float64(goNanos)
		if c.Postgres != nil {
			total += *c.Postgres * 1e3 * float64(w.messages)
		}
		b := total / (float64(wall) * float64(runtime.NumCPU()))
		row.Busy = &b
	}
	var dead int64
	if err := pg.admin.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{rName, "durable_dead_letters"}.Sanitize()).Scan(&dead); err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	row.DeadLetters = dead
	if row.Handled != int64(w.messages) {
		return row, fmt.Errorf("%d of %d messages handled", row.Handled, w.messages)
	}
	return row, nil
}

// benchSameHostWarning starts the warning a node logs when another
// process of its name runs on its host: what the instances of this bench
// are, so the instances leave it out of their warnings.
const benchSameHostWarning = "durable: another process runs under this node's name on this host"

// senderFirst is the index of sender i's first message: the messages in n
// contiguous shares of whole transactions.
func senderFirst(w benchWorkload, n, i int) int {
	txs := (w.messages + w.perTx - 1) / w.perTx
	return min(i*txs/n*w.perTx, w.messages)
}
