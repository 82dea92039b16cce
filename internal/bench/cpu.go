package bench

import (
	"bytes"
	"context"
	"os"
	"strconv"
)

// CPU accounting. On a machine whose cores are busy, throughput follows the
// CPU each message costs, wherever it is spent: in this process (the app,
// relay, inbox, drivers, SQLite) or in the Postgres backends serving it. The
// bench reads both from /proc (Linux, and a Postgres on the same machine),
// so that a run on a loaded machine still tells how much work a message is
// against a raw row. Elsewhere the figures are left out.

// benchCPUSample is the CPU time, in nanoseconds, of this process and of
// each Postgres backend of the run.
type benchCPUSample struct {
	self     int64
	backends map[int]benchBackend
	ok       bool
}

type benchBackend struct {
	role string
	cpu  int64
}

// benchCPUTime reads the time a task spent on a CPU from
// /proc/<pid>/schedstat (nanoseconds, its first field).
func benchCPUTime(pid string) (int64, bool) {
	b, err := os.ReadFile("/proc/" + pid + "/schedstat")
	if err != nil {
		return 0, false
	}
	f, _, _ := bytes.Cut(b, []byte(" "))
	v, err := strconv.ParseInt(string(f), 10, 64)
	return v, err == nil
}

// benchSelfCPU is the CPU time of every thread of this process.
func benchSelfCPU() (int64, bool) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, false
	}
	var sum int64
	for _, t := range tasks {
		if v, ok := benchCPUTime("self/task/" + t.Name()); ok {
			sum += v
		}
	}
	return sum, true
}

// benchSampleCPU samples this process and the backends pids returns (nil:
// no Postgres to account).
func benchSampleCPU(ctx context.Context, pids func(context.Context) map[int]string) benchCPUSample {
	var s benchCPUSample
	s.self, s.ok = benchSelfCPU()
	if !s.ok || pids == nil {
		return s
	}
	s.backends = make(map[int]benchBackend)
	for pid, role := range pids(ctx) {
		p := strconv.Itoa(pid)
		comm, err := os.ReadFile("/proc/" + p + "/comm")
		if err != nil || !bytes.HasPrefix(comm, []byte("postgres")) {
			// Not a local server (or not visible): leave Postgres out.
			s.backends = nil
			return s
		}
		if v, ok := benchCPUTime(p); ok {
			s.backends[pid] = benchBackend{role: role, cpu: v}
		}
	}
	return s
}

// CPU is the CPU a phase cost per message (or raw row), in
// microseconds.
type CPU struct {
	Go       float64  `json:"go_us"`
	Postgres *float64 `json:"postgres_us"` // null on SQLite, or when the server's backends cannot be read
	// PostgresByRole splits Postgres's part by the connections' role: app
	// (the app's transactions, or the raw inserts), relay (the sender's
	// dialect), inbox (the receiver's).
	PostgresByRole map[string]float64 `json:"postgres_us_by_role"`
}

// benchCPUPer is the CPU between two samples divided among n units.
func benchCPUPer(before, after benchCPUSample, n int) *CPU {
	if !before.ok || !after.ok || n <= 0 {
		return nil
	}
	c := &CPU{Go: float64(after.self-before.self) / 1e3 / float64(n)}
	if before.backends != nil && after.backends != nil {
		var sum int64
		c.PostgresByRole = make(map[string]float64)
		for pid, b := range after.backends {
			d := b.cpu - before.backends[pid].cpu // a backend opened during the phase counts from 0
			sum += d
			c.PostgresByRole[b.role] += float64(d) / 1e3 / float64(n)
		}
		pg := float64(sum) / 1e3 / float64(n)
		c.Postgres = &pg
	}
	return c
}
