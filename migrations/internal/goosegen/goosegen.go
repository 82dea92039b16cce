// Package goosegen turns durable's golang-migrate files (NNNN_name.up.sql and
// NNNN_name.down.sql) into goose files (NNNN_name.sql with -- +goose Up and
// -- +goose Down sections). It is used by the gengoose command, run through
// `go generate ./migrations`, and by the test that fails when the committed
// goose files drift from their source.
//
// # Why each direction is one statement
//
// Each direction is wrapped, whole, in a single StatementBegin/StatementEnd
// block, so goose sends the file's text to the database in one Exec, inside
// its transaction. That is exactly what golang-migrate does with the same
// file (its pgx/v5, postgres and sqlite drivers run a file in one Exec unless
// told otherwise), so both tools execute byte-identical SQL the same way and
// cannot end in different schemas. It also keeps goose's own statement
// splitter, which ends a statement at any line ending in a semicolon, away
// from string literals, dollar-quoted function bodies and SQLite trigger
// bodies that future migrations may contain. Both drivers durable supports
// run several statements in one Exec: pgx uses the simple protocol for a
// query without arguments, and modernc.org/sqlite steps through every
// statement of the text.
package goosegen

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Dialects lists the directories, one per dialect, that hold golang-migrate
// files; goose files are written to goose/<dialect>.
var Dialects = []string{"postgres", "sqlite"}

// Migration is one numbered pair of golang-migrate files.
type Migration struct {
	Version uint64 // the number before the first underscore, > 0
	Prefix  string // the number as written in the file name, e.g. "0001"
	Name    string // the part after the underscore, e.g. "init"
	Up      []byte
	Down    []byte
}

// GooseName is the goose file name of m, e.g. "0001_init.sql".
func (m Migration) GooseName() string { return m.Prefix + "_" + m.Name + ".sql" }

// UpName is the golang-migrate up file name of m.
func (m Migration) UpName() string { return m.Prefix + "_" + m.Name + ".up.sql" }

// DownName is the golang-migrate down file name of m.
func (m Migration) DownName() string { return m.Prefix + "_" + m.Name + ".down.sql" }

var fileRE = regexp.MustCompile(`^([0-9]+)_([A-Za-z0-9_]+)\.(up|down)\.sql$`)

// Collect reads the golang-migrate files at the root of fsys and returns
// them paired and sorted by version. It fails when a file name does not
// follow NNNN_name.(up|down).sql, when two files share a version, when an up
// has no down or a down no up, when an up holds no SQL, or when a line would
// be read by goose as an annotation.
func Collect(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	byVersion := map[uint64]*Migration{}
	var errs []error
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		name := e.Name()
		sm := fileRE.FindStringSubmatch(name)
		if sm == nil {
			errs = append(errs, fmt.Errorf("%s: file name must be NNNN_name.up.sql or NNNN_name.down.sql", name))
			continue
		}
		v, err := strconv.ParseUint(sm[1], 10, 63)
		if err != nil || v == 0 {
			errs = append(errs, fmt.Errorf("%s: version must be a number greater than 0", name))
			continue
		}
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		if err := checkBody(name, body); err != nil {
			errs = append(errs, err)
			continue
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Version: v, Prefix: sm[1], Name: sm[2]}
			byVersion[v] = m
		} else if m.Prefix != sm[1] || m.Name != sm[2] {
			errs = append(errs, fmt.Errorf("%s: version %d is also used by %s_%s", name, v, m.Prefix, m.Name))
			continue
		}
		switch sm[3] {
		case "up":
			m.Up = body
		case "down":
			m.Down = body
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		switch {
		case m.Up == nil:
			errs = append(errs, fmt.Errorf("%s has no %s", m.DownName(), m.UpName()))
		case m.Down == nil:
			errs = append(errs, fmt.Errorf("%s has no %s: every migration must be reversible", m.UpName(), m.DownName()))
		case !hasSQL(m.Up):
			errs = append(errs, fmt.Errorf("%s holds no SQL", m.UpName()))
		default:
			out = append(out, *m)
		}
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return nil, errors.Join(errs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// checkBody rejects text that goose would not pass through unchanged.
func checkBody(name string, body []byte) error {
	for i, line := range strings.Split(string(body), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "--") && strings.Contains(t, "+goose") {
			return fmt.Errorf("%s:%d: a comment mentioning +goose would be read by goose as an annotation", name, i+1)
		}
		if strings.HasSuffix(line, "\r") {
			return fmt.Errorf("%s:%d: CRLF line ending; migrations must use LF", name, i+1)
		}
	}
	return nil
}

// hasSQL reports whether body holds anything besides blank lines and
// line comments.
func hasSQL(body []byte) bool {
	for line := range strings.Lines(string(body)) {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "--") {
			return true
		}
	}
	return false
}

// Render returns the goose file for m. dir is the directory of the source
// files as named in the header, e.g. "postgres".
func Render(dir string, m Migration) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "-- Code generated by go generate ./migrations from %s and %s. DO NOT EDIT.\n",
		path.Join(dir, m.UpName()), path.Join(dir, m.DownName()))
	b.WriteString("-- Each direction runs as one statement, as golang-migrate runs the source file.\n")
	section(&b, "Up", m.Up)
	section(&b, "Down", m.Down)
	return b.Bytes()
}

func section(b *bytes.Buffer, dir string, body []byte) {
	fmt.Fprintf(b, "\n-- +goose %s\n", dir)
	text := strings.TrimRight(string(body), " \t\n") + "\n"
	if !hasSQL(body) {
		// Only comments: nothing for goose to run (an empty statement
		// block would send an empty query).
		if strings.TrimSpace(text) != "" {
			b.WriteString(text)
		}
		return
	}
	b.WriteString("-- +goose StatementBegin\n")
	b.WriteString(text)
	b.WriteString("-- +goose StatementEnd\n")
}

// Generate returns the goose files, by file name, for the golang-migrate
// files at the root of src. dir names src in the generated headers.
func Generate(src fs.FS, dir string) (map[string][]byte, error) {
	ms, err := Collect(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	out := make(map[string][]byte, len(ms))
	for _, m := range ms {
		out[m.GooseName()] = Render(dir, m)
	}
	return out, nil
}
