// Package browser starts a real headless Chromium for tests, driven through
// the DevTools protocol with chromedp. It is imported by tests only.
//
// Chromium is found through DURABLE_CHROMIUM (a path), else as chromium,
// chromium-browser, google-chrome or google-chrome-stable on PATH (Debian's
// package `chromium` installs /usr/bin/chromium; .ci/run installs it when it
// is missing). When none is there the test is skipped with a clear message,
// unless the CI environment variable is set: then the test fails, because CI
// must prove the browser path (the same policy as internal/testdb for
// Postgres).
//
// Each Browser is one Chromium process with its own temporary profile,
// headless, without GPU, and without the sandbox when the tests run as root
// (Chromium refuses to start sandboxed as root). Each Tab is a new tab of it
// with its own deadline, optionally sending extra headers (an Authorization
// header for a console user) on every request it makes.
package browser

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// Candidates are the names looked up on PATH, in order, when
// DURABLE_CHROMIUM is not set.
var Candidates = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// TabTimeout bounds everything a Tab does unless NewTab is given another
// deadline: a generous bound so that a broken page fails the test instead
// of hanging it, not a measure of speed.
const TabTimeout = 2 * time.Minute

// Find returns the path of the Chromium to use, or an error saying what was
// looked for.
func Find() (string, error) {
	if p := os.Getenv("DURABLE_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("DURABLE_CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	for _, name := range Candidates {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("none of %s is on PATH and DURABLE_CHROMIUM is not set", strings.Join(Candidates, ", "))
}

// Path returns the Chromium to use, or skips tb (fails it when CI is set)
// when there is none.
func Path(tb testing.TB) string {
	tb.Helper()
	p, err := Find()
	if err != nil {
		msg := fmt.Sprintf("Chromium not found (%v); install Debian's chromium package or set DURABLE_CHROMIUM", err)
		if os.Getenv("CI") != "" {
			tb.Fatal("CI is set, browser tests must run: " + msg)
			return ""
		}
		tb.Skip("skipping browser test: " + msg)
		return ""
	}
	return p
}

// Browser is a headless Chromium process started for a test.
type Browser struct {
	ctx    context.Context // the browser's chromedp context (its first tab)
	output *syncBuffer     // Chromium's stdout and stderr, for failures
}

// Start starts a headless Chromium for tb (skipping or failing as Path
// does when there is none) and stops it, removing its profile, when tb
// ends.
func Start(tb testing.TB) *Browser {
	tb.Helper()
	path := Path(tb)
	out := &syncBuffer{}
	// The profile is not in tb.TempDir: Chromium's child processes may
	// still write into it for a moment after the browser stops, which
	// would fail TempDir's removal; it is removed with a few retries.
	profile, err := os.MkdirTemp("", "durable-chromium-")
	if err != nil {
		tb.Fatalf("browser: profile directory: %v", err)
	}
	tb.Cleanup(func() { removeProfile(tb, profile) })
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.CombinedOutput(out),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	b := &Browser{ctx: ctx, output: out}
	tb.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// The first call starts the process and opens its first tab; it must
	// not have a deadline of its own, which would stop the browser when it
	// passes (chromedp.Run's rule). Chromium's start is bounded by
	// chromedp's own wait for its DevTools address.
	if err := chromedp.Do(ctx); err != nil {
		tb.Fatalf("browser: start %s: %v\n%s", path, err, out.String())
	}
	return b
}

// TabOption configures a tab opened by NewTab.
type TabOption func(*tabConfig)

type tabConfig struct {
	headers map[string]any
	timeout time.Duration
}

// WithHeader sends the header on every request the tab makes.
func WithHeader(name, value string) TabOption {
	return func(c *tabConfig) {
		if c.headers == nil {
			c.headers = map[string]any{}
		}
		c.headers[name] = value
	}
}

// WithBasicAuth sends HTTP basic credentials on every request the tab
// makes.
func WithBasicAuth(user, password string) TabOption {
	return WithHeader("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+password)))
}

// WithBearer sends a bearer token on every request the tab makes.
func WithBearer(token string) TabOption {
	return WithHeader("Authorization", "Bearer "+token)
}

// WithTimeout bounds everything the tab does (default TabTimeout).
func WithTimeout(d time.Duration) TabOption {
	return func(c *tabConfig) { c.timeout = d }
}

// NewTab opens a new tab, closed when tb ends, and returns its context for
// chromedp.Run. Every action run on it shares its deadline.
func (b *Browser) NewTab(tb testing.TB, opts ...TabOption) context.Context {
	tb.Helper()
	c := tabConfig{timeout: TabTimeout}
	for _, o := range opts {
		o(&c)
	}
	tab, cancelTab := chromedp.NewContext(b.ctx)
	tb.Cleanup(cancelTab)
	// The first call opens the tab, bound to tab (no deadline: see Start).
	if err := chromedp.Do(tab); err != nil {
		tb.Fatalf("browser: new tab: %v\n%s", err, b.output.String())
	}
	ctx, cancel := context.WithTimeout(tab, c.timeout)
	tb.Cleanup(cancel)
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		tb.Fatalf("browser: new tab: enable the network domain: %v", err)
	}
	if len(c.headers) > 0 {
		if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers(c.headers)}); err != nil {
			tb.Fatalf("browser: new tab: set headers: %v", err)
		}
	}
	return ctx
}

// Output returns what Chromium printed so far, for a failure message.
func (b *Browser) Output() string { return b.output.String() }

// Screenshot captures the whole page of tab as a PNG and writes it to
// path.
func Screenshot(tab context.Context, path string) error {
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		return fmt.Errorf("browser: screenshot: %w", err)
	}
	if len(png) == 0 {
		return errors.New("browser: screenshot: empty image")
	}
	return os.WriteFile(path, png, 0o644)
}

// removeProfile removes a stopped browser's profile directory, retrying
// while its last child processes finish writing into it; it logs what it
// could not remove rather than fail the test for it.
func removeProfile(tb testing.TB, dir string) {
	var err error
	for range 50 {
		if err = os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Logf("browser: remove the profile %s: %v", dir, err)
}

// syncBuffer collects Chromium's output from its goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() < 1<<16 {
		s.b.Write(p)
	}
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The helpers below run one step on a tab and fail tb, with the step and
// the page's address in the message, when it fails.

// Navigate loads url in tab and returns the response's HTTP status.
func Navigate(tb testing.TB, tab context.Context, url string) int {
	tb.Helper()
	resp, err := chromedp.Run(tab, chromedp.NavigateResponse(url))
	if err != nil {
		tb.Fatalf("browser: navigate to %s: %v", url, err)
	}
	return int(resp.Status)
}

// Text returns the visible text of the first element matching the CSS
// selector css. The element must be in the page already (a rendered page,
// or one a script has changed): a missing one fails tb at once rather than
// when the tab's deadline passes.
func Text(tb testing.TB, tab context.Context, css string) string {
	tb.Helper()
	if Count(tb, tab, css) == 0 {
		tb.Fatalf("browser: no element matches %s on %s", css, location(tab))
	}
	s, err := chromedp.Run(tab, chromedp.Text(chromedp.CSS(css)))
	if err != nil {
		tb.Fatalf("browser: text of %s on %s: %v", css, location(tab), err)
	}
	return s
}

// Count returns how many elements match the CSS selector css now, without
// waiting.
func Count(tb testing.TB, tab context.Context, css string) int {
	tb.Helper()
	n, err := chromedp.Run(tab, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", css)))
	if err != nil {
		tb.Fatalf("browser: count %s on %s: %v", css, location(tab), err)
	}
	return n
}

// Click clicks the first element matching css without waiting for a page
// load (for a button whose script changes the page, a checkbox, a link to
// an anchor).
func Click(tb testing.TB, tab context.Context, css string) {
	tb.Helper()
	if err := chromedp.Do(tab, chromedp.Click(chromedp.CSS(css))); err != nil {
		tb.Fatalf("browser: click %s on %s: %v", css, location(tab), err)
	}
}

// Submit clicks the first element matching css, a link or a form's submit
// button, waits for the page it leads to and returns its HTTP status.
func Submit(tb testing.TB, tab context.Context, css string) int {
	tb.Helper()
	resp, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS(css)))
	if err != nil {
		tb.Fatalf("browser: submit with %s on %s: %v", css, location(tab), err)
	}
	return int(resp.Status)
}

// SetValue sets the value of the form field matching css.
func SetValue(tb testing.TB, tab context.Context, css, value string) {
	tb.Helper()
	if err := chromedp.Do(tab, chromedp.SetValue(chromedp.CSS(css), value)); err != nil {
		tb.Fatalf("browser: set %s on %s: %v", css, location(tab), err)
	}
}

// Eval evaluates the JavaScript expression in the page and returns its
// value.
func Eval[T any](tb testing.TB, tab context.Context, expr string) T {
	tb.Helper()
	v, err := chromedp.Run(tab, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.Fatalf("browser: evaluate %s on %s: %v", expr, location(tab), err)
	}
	return v
}

// location is the tab's address for messages ("?" when it cannot be read).
func location(tab context.Context) string {
	u, err := chromedp.Run(tab, chromedp.Location())
	if err != nil {
		return "?"
	}
	return u
}
