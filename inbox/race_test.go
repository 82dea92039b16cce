//go:build race

package inbox

// raceEnabled reports a build with the race detector, under which
// modernc.org/sqlite runs tens of times slower (checkptr).
const raceEnabled = true
