//go:build !durable_crashpoints

package crashpoint

// Hit marks the crash point name. This build has no crash points (the tag
// durable_crashpoints is not set): Hit does nothing and costs nothing.
func Hit(name string) {}
