// Package proc runs test helper programs as real subprocesses, so the fault
// suite can kill a sending or receiving service with SIGKILL at any moment
// and start it again on the same database.
//
// A test package builds each helper once per test binary and starts it as
// often as it needs:
//
//	func TestMain(m *testing.M) { os.Exit(proc.Main(m)) } // removes the builds at the end
//
//	bin := proc.Build(t, "./internal/sender")             // go build, cached per test binary
//	p := proc.Start(t, bin, proc.Options{Name: "orders", Args: []string{"-db", url}})
//	ready, err := p.WaitReady(10 * time.Second)           // the child printed "READY addr=..."
//	addr := ready.Get("addr")
//	p.Kill()                                              // SIGKILL, waits for the exit
//	p.Stop(5 * time.Second)                               // SIGTERM, then SIGKILL after 5s
//
// # The readiness handshake
//
// A child tells the parent it is ready by printing one line on stdout that
// is the word READY followed by key=value fields, for example
//
//	READY addr=127.0.0.1:40121 node=billing
//
// (FormatReady builds such a line; a value with spaces or quotes is written
// as a Go quoted string). WaitReady returns the fields, or an error when the
// child exits first or the timeout passes; the error carries the child's last
// lines of output.
//
// # Output, lifetime and signals
//
// Each line the child writes goes to the test log, prefixed with the
// process name ("orders: ...", "orders stderr: ..."), and to Options.OnLine
// if set. A child still running when the test ends is killed, and its output
// is drained before the test returns. Children run in their own process
// group (Kill reaches anything they start) and, on Linux, are killed by the
// kernel if the test binary dies (Pdeathsig).
//
// When the test binary is built with -race, helpers are built with -race too.
//
// The package builds on Unix only (doc.go aside).
package proc
