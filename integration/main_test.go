package integration

import (
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/durable-go/durable/integration/internal/proc"
)

var (
	soakFlag = flag.Duration("soak", 0,
		"run each fault test this long, scenario after scenario with random seeds (0: one scenario with the test's fixed seed)")
	seedFlag = flag.Uint64("seed", 0,
		"seed of the fault schedule (0: the test's fixed seed, or random ones under -soak)")
	lengthFlag = flag.Duration("length", 0,
		"length of the fault phase of each scenario (0: the test's default)")
	raceHelpersFlag = flag.Bool("race-helpers", false,
		"build the helper services with -race when the tests run with -race (slow: SQLite under -race crawls)")
)

// integrationParallel is how many of this package's tests run at once
// unless -test.parallel is given. Their work is done by helper processes
// and private Postgres servers, and they mostly wait for them, so the
// default (GOMAXPROCS, 2 on a small CI machine) left the cores idle while
// the scenarios ran two by two.
const integrationParallel = 3

func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit && runtime.GOMAXPROCS(0) < integrationParallel {
		if err := flag.Set("test.parallel", strconv.Itoa(integrationParallel)); err != nil {
			panic(err)
		}
	}
	os.Exit(proc.Main(m))
}

// helperBinary builds the node helper once per test binary, with the
// library's crash points (the build tag durable_crashpoints, see
// internal/crashpoint). It is built without the race detector unless
// -race-helpers is given: the services run the library's code under faults at
// a realistic speed, and the library's own tests run under -race.
func helperBinary(t *testing.T) string {
	t.Helper()
	start := time.Now()
	var bin string
	if *raceHelpersFlag {
		bin = proc.Build(t, "./internal/cmd/node", "-tags=durable_crashpoints")
	} else {
		bin = proc.Build(t, "./internal/cmd/node", "-tags=durable_crashpoints", "-race=false")
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("built the node helper in %v", d.Round(100*time.Millisecond))
	}
	return bin
}
