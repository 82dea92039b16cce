//go:build race

package durable_test

// raceEnabled: the race detector slows the nodes several times over (SQLite,
// with modernc's checkptr, most), so the scale-out tests run smaller backlogs.
const raceEnabled = true
