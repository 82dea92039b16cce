package browser_test

import (
	"bytes"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/durable-go/durable/internal/browser"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// site is a tiny site: a page showing the request's Authorization header
// and a button whose script writes into the page, and a form whose POST
// answers with what it received.
func site() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><html><body>
<h1 id="title">Hello from the test</h1>
<p id="auth">[%s]</p>
<button id="go" onclick="document.getElementById('out').textContent='clicked'">Go</button>
<p id="out">not yet</p>
<ul><li class="item">a</li><li class="item">b</li></ul>
<form method="post" action="/submit"><input id="x" name="x" value="42"><button id="send" type="submit">Send</button></form>
</body></html>`, html.EscapeString(r.Header.Get("Authorization")))
	})
	mux.HandleFunc("POST /submit", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `<!doctype html><p id="got">x=%s auth=%s</p>`,
			html.EscapeString(r.FormValue("x")), html.EscapeString(r.Header.Get("Authorization")))
	})
	return mux
}

// The harness drives a real page: reads text, clicks a button that runs a
// script, fills and submits a form with the tab's header, takes a
// screenshot; a second tab sends no header.
func TestBrowserDrivesAPage(t *testing.T) {
	srv := httptest.NewServer(site())
	defer srv.Close()
	b := browser.Start(t)
	tab := b.NewTab(t, browser.WithBearer("s3cret"))

	if st := browser.Navigate(t, tab, srv.URL+"/"); st != http.StatusOK {
		t.Fatalf("GET / answered %d", st)
	}
	if got := browser.Text(t, tab, "#title"); got != "Hello from the test" {
		t.Fatalf("title %q", got)
	}
	if got := browser.Text(t, tab, "#auth"); got != "[Bearer s3cret]" {
		t.Fatalf("the page saw Authorization %q, want [Bearer s3cret]", got)
	}
	if n := browser.Count(t, tab, "li.item"); n != 2 {
		t.Fatalf("%d items, want 2", n)
	}
	browser.Click(t, tab, "#go")
	if got := browser.Text(t, tab, "#out"); got != "clicked" {
		t.Fatalf("after the click the page says %q, want clicked", got)
	}
	if got := browser.Eval[string](t, tab, "document.getElementById('out').textContent"); got != "clicked" {
		t.Fatalf("eval: %q", got)
	}

	shot := filepath.Join(t.TempDir(), "page.png")
	if err := browser.Screenshot(tab, shot); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot is not a PNG: starts with %q", png[:min(8, len(png))])
	}

	browser.SetValue(t, tab, "#x", "43")
	if st := browser.Submit(t, tab, "#send"); st != http.StatusAccepted {
		t.Fatalf("the form's POST answered %d, want 202", st)
	}
	if got := browser.Text(t, tab, "#got"); got != "x=43 auth=Bearer s3cret" {
		t.Fatalf("the form's POST got %q, want %q", got, "x=43 auth=Bearer s3cret")
	}

	plain := b.NewTab(t)
	browser.Navigate(t, plain, srv.URL+"/")
	if got := browser.Text(t, plain, "#auth"); got != "[]" {
		t.Fatalf("a tab without headers sent Authorization %q", got)
	}
}

// A DURABLE_CHROMIUM that does not exist is reported, not replaced by
// whatever is on PATH.
func TestFindHonoursTheVariable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-chromium")
	t.Setenv("DURABLE_CHROMIUM", missing)
	_, err := browser.Find()
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Find() error %v, want one naming %s", err, missing)
	}
}

// recordTB records what Path does with a missing Chromium instead of
// skipping or failing the test that runs it.
type recordTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordTB) Helper()           {}
func (r *recordTB) Skip(args ...any)  { r.skipped = fmt.Sprint(args...) }
func (r *recordTB) Fatal(args ...any) { r.failed = fmt.Sprint(args...) }

// Without Chromium a browser test is skipped, except under CI, where it
// fails: CI must prove the browser path.
func TestPathPolicy(t *testing.T) {
	t.Setenv("DURABLE_CHROMIUM", filepath.Join(t.TempDir(), "no-chromium"))
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := &recordTB{TB: t}
		browser.Path(r)
		switch {
		case ci == "" && (r.failed != "" || !strings.Contains(r.skipped, "skipping browser test: Chromium not found")):
			t.Fatalf("without CI: skipped %q, failed %q; want a skip", r.skipped, r.failed)
		case ci != "" && (r.skipped != "" || !strings.Contains(r.failed, "CI is set, browser tests must run")):
			t.Fatalf("with CI: skipped %q, failed %q; want a failure", r.skipped, r.failed)
		}
	}
}
