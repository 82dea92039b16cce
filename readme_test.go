package durable_test

import (
	"bytes"
	"encoding/json"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// quickStartBlock matches a fenced Go block of README.md marked as a quick start by an HTML
// comment just before it.
var quickStartBlock = regexp.MustCompile("(?s)<!-- quickstart: ([a-z]+) -->\\s*```go\n(.*?\n)```")

// TestReadmeQuickStart builds the quick start programs of README.md, one per dialect, with the
// go command against this module: the README's code must compile exactly as written. Each
// program is placed, through go build's -overlay, as the only file of a package directory of
// this module that does not exist on disk, so nothing is written to the module and the build
// uses its go.mod and go.sum; GOPROXY=off keeps it offline (the modules come from the cache
// that building this module's tests filled).
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string][]byte{}
	lines := map[string]int{} // README.md's line of the block's first line of code
	var names []string
	for _, m := range quickStartBlock.FindAllSubmatchIndex(readme, -1) {
		name := string(readme[m[2]:m[3]])
		if _, dup := blocks[name]; dup {
			t.Fatalf("README.md has two quick start blocks marked %q", name)
		}
		blocks[name] = readme[m[4]:m[5]]
		lines[name] = 1 + bytes.Count(readme[:m[4]], []byte("\n"))
		names = append(names, name)
	}
	if want := []string{"postgres", "sqlite"}; !slices.Equal(names, want) {
		t.Fatalf("README.md's quick start blocks (<!-- quickstart: NAME --> before a ```go fence): %q, want %q", names, want)
	}
	for _, name := range names {
		if formatted, err := format.Source(blocks[name]); err != nil {
			t.Errorf("README.md's %s quick start does not parse: %v", name, err)
		} else if !bytes.Equal(formatted, blocks[name]) {
			t.Errorf("README.md's %s quick start is not gofmt-formatted; gofmt gives:\n%s", name, formatted)
		}
	}

	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH (%v): the README's quick start cannot be built", err)
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "main.go")
			if err := os.WriteFile(src, blocks[name], 0o644); err != nil {
				t.Fatal(err)
			}
			pkg := filepath.Join("internal", "readmequickstart", name)
			overlay, err := json.Marshal(map[string]map[string]string{
				"Replace": {filepath.Join(root, pkg, "main.go"): src},
			})
			if err != nil {
				t.Fatal(err)
			}
			overlayFile := filepath.Join(dir, "overlay.json")
			if err := os.WriteFile(overlayFile, overlay, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(goCmd, "build", "-overlay", overlayFile, "-o", os.DevNull, "./"+filepath.ToSlash(pkg))
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=readonly")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("README.md's %s quick start (its code starts at README.md:%d; line 1 of main.go below) does not compile (%v):\n%s", name, lines[name], err, out)
			}
		})
	}
}
