//go:build race

package tcp

// raceEnabled: the race detector slows the server several times over.
const raceEnabled = true
