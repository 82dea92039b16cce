// Command gengoose writes durable's goose migrations from its golang-migrate
// migrations. Run it through `go generate ./migrations`, from the migrations
// directory: for each dialect it reads <dialect>/NNNN_name.up.sql and
// .down.sql and writes goose/<dialect>/NNNN_name.sql, removing goose files
// whose source is gone. Output is deterministic; unchanged files are not
// rewritten.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/durable-go/durable/migrations/internal/goosegen"
)

func main() {
	dir := flag.String("dir", ".", "the migrations directory")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "gengoose:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	for _, d := range goosegen.Dialects {
		files, err := goosegen.Generate(os.DirFS(filepath.Join(root, d)), d)
		if err != nil {
			return err
		}
		out := filepath.Join(root, "goose", d)
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p := filepath.Join(out, n)
			if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, files[n]) {
				continue
			}
			if err := os.WriteFile(p, files[n], 0o644); err != nil {
				return err
			}
			fmt.Println("gengoose: wrote", p)
		}
		stale, err := filepath.Glob(filepath.Join(out, "*.sql"))
		if err != nil {
			return err
		}
		for _, p := range stale {
			if _, ok := files[filepath.Base(p)]; ok {
				continue
			}
			if err := os.Remove(p); err != nil {
				return err
			}
			fmt.Println("gengoose: removed", p)
		}
	}
	return nil
}
