//go:build race

package proc

// raceEnabled: the test binary runs under the race detector, so helpers are
// built with -race too.
const raceEnabled = true
