package crashpoint

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// childEnv marks the test binary run again as a child process.
const childEnv = "CRASHPOINT_TEST_CHILD"

// TestChild is the child process of the other tests: run with childEnv set,
// it hits other points and then x three times, printing after each hit of x
// that it survived. It skips in a normal run.
func TestChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("runs only as the child process of another test")
	}
	Hit("other")
	Hit("x:2")
	Hit("xx")
	for i := 1; i <= 3; i++ {
		Hit("x")
		Hit("other")
		fmt.Printf("survived hit %d\n", i)
	}
}

// runChild runs TestChild in a new process with arm as DURABLE_CRASHPOINT
// and returns what it wrote and how it ended.
func runChild(t *testing.T, arm string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$", "-test.count=1")
	// The race runtime sleeps a second at exit unless told not to.
	cmd.Env = append([]string{"GORACE=atexit_sleep_ms=0"}, os.Environ()...)
	cmd.Env = append(cmd.Env, childEnv+"=1", EnvVar+"="+arm)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}
