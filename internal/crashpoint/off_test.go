//go:build !durable_crashpoints

package crashpoint

import (
	"strings"
	"testing"
)

// Without the build tag, an armed point is never reached: the child hits x
// three times and exits normally.
func TestHitDoesNothing(t *testing.T) {
	for _, arm := range []string{"x", "x:2", "not a valid value:0"} {
		stdout, stderr, err := runChild(t, arm)
		if err != nil {
			t.Fatalf("%s=%s: the child failed: %v\nstdout:\n%s\nstderr:\n%s", EnvVar, arm, err, stdout, stderr)
		}
		if !strings.Contains(stdout, "survived hit 3") {
			t.Errorf("%s=%s: the child did not run to the end:\n%s", EnvVar, arm, stdout)
		}
		if strings.Contains(stderr, "CRASHPOINT") {
			t.Errorf("%s=%s: the child printed a crash point:\n%s", EnvVar, arm, stderr)
		}
	}
}
