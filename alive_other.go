//go:build !unix

package durable

// processGone cannot tell on this system; a stopped process is found by
// its silence instead (Config.NodeTimeout).
func processGone(int) bool { return false }
