package integration

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestFaultSQLite runs the fault scenario on SQLite: two sender processes
// share the orders file, two receiver processes the billing file; the
// senders dial one proxy (Peer.Addr) that the test switches between the
// receivers.
func TestFaultSQLite(t *testing.T) {
	t.Parallel()
	faultTest(t, scenario{
		dialect:   "sqlite",
		seed:      1,
		length:    45 * time.Second,
		senders:   2,
		receivers: 2,
		rate:      60,
		writers:   1,
		stuck:     0.0005,
	})
}

// TestFaultPostgres runs the fault scenario on Postgres, with a private
// server per service that the database loop restarts and kills: three
// sender processes share the orders database, three receiver processes the
// billing database, each receiver behind a proxy of its own; the senders
// spread their batches over the three (Peer.Addrs), and the network loop
// breaks one receiver's proxy or all of them, or partitions one receiver.
// The total load is that of two senders at 60 tx/s.
func TestFaultPostgres(t *testing.T) {
	t.Parallel()
	faultTest(t, scenario{
		dialect:          "postgres",
		seed:             2,
		length:           55 * time.Second,
		senders:          3,
		receivers:        3,
		rate:             40,
		writers:          2,
		dbFaults:         true,
		stuck:            0.002,
		proxyPerReceiver: true,
	})
}

// faultTest runs sc once with its fixed seed (or -seed), or, under -soak,
// scenario after scenario with random seeds until the soak time is up.
func faultTest(t *testing.T, sc scenario) {
	if testing.Short() {
		t.Skip("the fault suite takes minutes; it runs without -short")
	}
	// A scenario of the test's full length must hit every window exactly.
	sc.windows = *lengthFlag <= 0 || *lengthFlag >= sc.length
	if *lengthFlag > 0 {
		sc.length = *lengthFlag
	}
	if *soakFlag <= 0 {
		if *seedFlag != 0 {
			sc.seed = *seedFlag
		}
		t.Logf("seed %d (reproduce: %s)", sc.seed, reproduce(t, sc))
		runScenario(t, sc)
		if t.Failed() {
			t.Logf("FAILED with seed %d; reproduce: %s", sc.seed, reproduce(t, sc))
		}
		return
	}
	end := time.Now().Add(*soakFlag)
	if d, ok := t.Deadline(); ok && d.Add(-sc.length-3*time.Minute).Before(end) {
		end = d.Add(-sc.length - 3*time.Minute)
		t.Logf("soak shortened to end by %v to fit the test timeout (use -timeout 0)", end.Format(time.TimeOnly))
	}
	seed := *seedFlag
	for i := 0; i == 0 || time.Now().Before(end); i++ {
		if *seedFlag == 0 {
			var b [8]byte
			_, _ = crand.Read(b[:])
			seed = uint64(binary.LittleEndian.Uint32(b[:]) >> 1) // short enough to type
		} else if i > 0 {
			seed++
		}
		sc.seed = seed
		ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runScenario(t, sc) })
		if !ok {
			t.Errorf("FAILED with seed %d; reproduce: %s", seed, reproduce(t, sc))
			return
		}
		t.Logf("seed %d passed", seed)
	}
}

func reproduce(t *testing.T, sc scenario) string {
	return fmt.Sprintf("go test ./integration -run '^%s$' -seed=%d -length=%v -v", testName(t), sc.seed, sc.length)
}

// testName is the top-level test's name.
func testName(t *testing.T) string {
	name := t.Name()
	for i := range len(name) {
		if name[i] == '/' {
			return name[:i]
		}
	}
	return name
}

// runScenario starts the services, runs the fault loops (network, crash,
// crash points, database) for sc.length while messages flow, drains and
// checks the history.
func runScenario(t *testing.T, sc scenario) {
	c := newCluster(t, sc)
	c.run()
	proxies := "one proxy switched between them"
	if sc.proxyPerReceiver {
		proxies = "a proxy each"
	}
	c.logf("running: %d senders at %v tx/s each, %d receivers (%s), %s, seed %d, faults for %v",
		sc.senders, sc.rate, sc.receivers, proxies, sc.dialect, sc.seed, sc.length)

	ctx, cancel := context.WithTimeout(context.Background(), sc.length)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		c.faultLoop(ctx, rand.New(rand.NewPCG(sc.seed, 1)), networkFaults, 200*time.Millisecond, 1500*time.Millisecond, nil)
	})
	wg.Go(func() {
		c.faultLoop(ctx, rand.New(rand.NewPCG(sc.seed, 2)), crashFaults, 500*time.Millisecond, 3*time.Second, &c.serial)
	})
	wg.Go(func() {
		c.crashPointLoop(ctx, rand.New(rand.NewPCG(sc.seed, 4)), 300*time.Millisecond, 1500*time.Millisecond)
	})
	if sc.dbFaults {
		wg.Go(func() {
			c.faultLoop(ctx, rand.New(rand.NewPCG(sc.seed, 3)), databaseFaults, 2*time.Second, 6*time.Second, nil)
		})
	}
	wg.Wait()
	c.logf("faults over")
	if t.Failed() {
		return
	}
	// Check even when the drain timed out: the history says what is missing.
	c.drain()
	c.check()
}
