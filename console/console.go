// Package console is durable's web console: an http.Handler that shows the
// outbox backlogs, the inbox queues, the dead letters of both sides and the
// throughput, and replays, purges, pauses and resumes, each action written to
// the audit table. It is server-rendered (html/template, assets embedded with
// embed), needs no JavaScript to read, and is safe to expose:
//
//   - every request is authenticated: bearer tokens or basic-auth users of
//     Config, or the application's own Authorizer; New refuses a Config
//     without any of them, so the console is never open by accident;
//   - a RoleReadOnly user sees everything and changes nothing (403);
//   - every state-changing request is a POST carrying a CSRF token (an HMAC
//     of the user and the time under a server key) in the form field "csrf";
//   - every page is sent with a strict Content-Security-Policy (no inline
//     script or style), X-Frame-Options DENY, nosniff, no referrer and
//     Cache-Control no-store;
//   - every payload, header and error is rendered as text.
//
// Mount it under a prefix of the application's mux, with Config.Prefix set
// to the same prefix (without the trailing slash):
//
//	h, err := console.New(d, &console.Config{
//		Prefix: "/durable",
//		Users:  []console.User{{Name: "alice", Password: pw, Role: console.RoleAdmin}},
//	})
//	mux.Handle("/durable/", h)
//
// The durable command serves it too: durable console --dsn … --listen
// 127.0.0.1:7480 (see docs/cli.md).
//
// # Pages
//
//   - / (overview): per destination the backlog, oldest unsent age, in
//     flight, retrying, last send error and pause; per inbox topic the
//     counts by state; the dead letters by side, reason and topic; the
//     throughput of the last hour as an SVG chart. It refreshes itself.
//   - /deadletters: the dead letters, newest first, filtered by side, peer,
//     topic, reason, time range and text of the last error, in pages
//     (keyset on seq: as fast deep as on the first page); select many, or
//     act on everything matching the filter.
//   - /deadletters/{seq}: one dead letter with its headers, payload and
//     every attempt's error; replay and purge.
//   - /outbox, /inbox: the pending and in-flight messages (the oldest
//     first), each with the same detail view.
//   - /pauses: pause and resume destinations and inbox queues.
//   - /audit: who did what, when, to how many.
//
// Replaying or purging more than nothing goes through a confirmation page
// that shows how many messages the action would change.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Store is what the console reads and changes: every dialect (postgres.New,
// postgres.NewSQL, sqlite.New) implements it, and so does dsn.DB.Admin's
// dialect.
type Store interface {
	// Name is the dialect's name.
	Name() string
	// OutboxStats returns the backlog per destination.
	OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error)
	// InboxStats counts the inbox's rows by state and topic.
	InboxStats(ctx context.Context) (dialects.InboxStats, error)
	// ListOutbox lists outbox rows (the pending and in-flight pages).
	ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error)
	// ListInbox lists inbox rows (the pending and in-flight pages).
	ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error)

	dialects.DeadLetterStore
	dialects.Controller
}

// Role is what an authenticated user may do.
type Role string

// Roles.
const (
	// RoleAdmin reads everything and may replay, purge, pause and resume.
	RoleAdmin Role = "admin"
	// RoleReadOnly reads everything and changes nothing: its POSTs are
	// refused with 403.
	RoleReadOnly Role = "readonly"
)

// valid reports whether r is one of the roles.
func (r Role) valid() bool { return r == RoleAdmin || r == RoleReadOnly }

// User is a basic-auth user.
type User struct {
	Name     string
	Password string
	Role     Role
}

// Token is a bearer token (Authorization: Bearer <Secret>). Name is the
// user the audit table records for it.
type Token struct {
	Name   string
	Secret string
	Role   Role
}

// Authorizer authenticates a request for an application that mounts the
// console behind its own authentication: it returns the user's name and
// role, or an error (the request is refused with 401). An empty user is an
// error too.
type Authorizer func(r *http.Request) (user string, role Role, err error)

// Config configures a Handler. At least one of Tokens, Users and Authorizer
// must be set.
type Config struct {
	// Prefix is the path the console is mounted under, such as "/durable"
	// (no trailing slash): requests must start with it and every link
	// carries it. Empty: the root.
	Prefix string
	// Tokens are the accepted bearer tokens.
	Tokens []Token
	// Users are the accepted basic-auth users.
	Users []User
	// Authorizer, when set, authenticates requests that carry neither a
	// configured token nor a configured user.
	Authorizer Authorizer
	// CSRFKey signs the CSRF tokens. Empty: a random key, so that forms
	// rendered before a restart, or by another replica, are refused; set
	// the same key on every replica behind one load balancer.
	CSRFKey []byte
	// PageSize is the number of rows per page of the lists. 0: 50.
	PageSize int
	// Refresh is how often the overview reloads itself. 0: 10 seconds;
	// negative: never.
	Refresh time.Duration
	// Logger logs the actions and the errors. nil: slog.Default().
	Logger *slog.Logger
}

// ErrNoCredentials is the error of New for a Config with neither Tokens,
// Users nor Authorizer: the console is never open by accident.
var ErrNoCredentials = errors.New("durable/console: no credentials configured: set Config.Tokens, Config.Users or Config.Authorizer")

// Handler is the console, an http.Handler.
type Handler struct {
	store   Store
	cfg     Config
	prefix  string
	key     []byte
	log     *slog.Logger
	mux     *http.ServeMux
	tmpl    *templates
	pageLen int
	now     func() time.Time
}

// New returns the console over store. It fails on a Config without
// credentials (ErrNoCredentials) and on an invalid one.
func New(store Store, cfg *Config) (*Handler, error) {
	if store == nil {
		return nil, errors.New("durable/console: nil store")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if len(c.Tokens) == 0 && len(c.Users) == 0 && c.Authorizer == nil {
		return nil, ErrNoCredentials
	}
	for i, t := range c.Tokens {
		if t.Secret == "" || t.Name == "" {
			return nil, fmt.Errorf("durable/console: Tokens[%d]: empty name or secret", i)
		}
		if !t.Role.valid() {
			return nil, fmt.Errorf("durable/console: Tokens[%d]: role %q is neither %q nor %q", i, t.Role, RoleAdmin, RoleReadOnly)
		}
	}
	for i, u := range c.Users {
		if u.Name == "" || u.Password == "" || strings.Contains(u.Name, ":") {
			return nil, fmt.Errorf("durable/console: Users[%d]: empty name or password, or a name with ':'", i)
		}
		if !u.Role.valid() {
			return nil, fmt.Errorf("durable/console: Users[%d] (%s): role %q is neither %q nor %q", i, u.Name, u.Role, RoleAdmin, RoleReadOnly)
		}
	}
	if c.Prefix != "" && (!strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/")) {
		return nil, fmt.Errorf("durable/console: Prefix %q must start with '/' and not end with one", c.Prefix)
	}
	if c.PageSize < 0 || c.PageSize > 1000 {
		return nil, fmt.Errorf("durable/console: PageSize %d is not within 0..1000", c.PageSize)
	}
	h := &Handler{store: store, cfg: c, prefix: c.Prefix, log: c.Logger, pageLen: c.PageSize, now: time.Now}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.pageLen == 0 {
		h.pageLen = 50
	}
	h.key = c.CSRFKey
	if len(h.key) == 0 {
		h.key = make([]byte, 32)
		if _, err := rand.Read(h.key); err != nil {
			return nil, fmt.Errorf("durable/console: csrf key: %w", err)
		}
	}
	t, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	h.tmpl = t
	h.routes()
	return h, nil
}

// identity is the authenticated user of a request.
type identity struct {
	user string
	role Role
}

type ctxKey struct{}

func who(r *http.Request) identity {
	id, _ := r.Context().Value(ctxKey{}).(identity)
	return id
}

// ServeHTTP serves the console: security headers, the prefix,
// authentication, and for a POST the role and the CSRF token.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")

	path := r.URL.Path
	if h.prefix != "" {
		rest, ok := strings.CutPrefix(path, h.prefix)
		if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
			http.NotFound(w, r)
			return
		}
		path = rest
	}

	id, ok := h.authenticate(r)
	if !ok {
		if len(h.cfg.Users) > 0 {
			hd.Set("WWW-Authenticate", `Basic realm="durable console", charset="UTF-8"`)
		} else {
			hd.Set("WWW-Authenticate", `Bearer realm="durable console"`)
		}
		http.Error(w, "401 unauthorized: credentials required", http.StatusUnauthorized)
		return
	}
	if path == "" {
		http.Redirect(w, r, h.prefix+"/", http.StatusMovedPermanently)
		return
	}
	if r.Method == http.MethodPost {
		if id.role != RoleAdmin {
			http.Error(w, "403 forbidden: the read-only role changes nothing", http.StatusForbidden)
			return
		}
		// Defense in depth beside the token: a browser says when a form
		// comes from another site.
		if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
			http.Error(w, "403 forbidden: cross-site request", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if !h.checkCSRF(id.user, r.PostForm.Get("csrf")) {
			http.Error(w, "403 forbidden: missing or invalid CSRF token (reload the page)", http.StatusForbidden)
			return
		}
	}
	r2 := r.WithContext(context.WithValue(r.Context(), ctxKey{}, id))
	u := *r.URL
	u.Path = path
	u.RawPath = ""
	r2.URL = &u
	h.mux.ServeHTTP(w, r2)
}

// authenticate checks the bearer token, the basic-auth user, then the
// Authorizer.
func (h *Handler) authenticate(r *http.Request) (identity, bool) {
	if auth := r.Header.Get("Authorization"); len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") && len(h.cfg.Tokens) > 0 {
		secret := strings.TrimSpace(auth[7:])
		var found *Token
		for i := range h.cfg.Tokens {
			if equal(secret, h.cfg.Tokens[i].Secret) && found == nil {
				found = &h.cfg.Tokens[i]
			}
		}
		if found != nil {
			return identity{found.Name, found.Role}, true
		}
		return identity{}, false
	}
	if name, pw, ok := r.BasicAuth(); ok && len(h.cfg.Users) > 0 {
		var found *User
		for i := range h.cfg.Users {
			u := &h.cfg.Users[i]
			// Every user is compared, so the time does not tell which
			// names exist.
			if equal(name, u.Name) && equal(pw, u.Password) && found == nil {
				found = u
			}
		}
		if found != nil {
			return identity{found.Name, found.Role}, true
		}
		return identity{}, false
	}
	if h.cfg.Authorizer != nil {
		user, role, err := h.cfg.Authorizer(r)
		if err != nil || user == "" || !role.valid() {
			return identity{}, false
		}
		return identity{user, role}, true
	}
	return identity{}, false
}

// equal compares a and b in a time that depends on neither.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// maxForm bounds the body of a POST (a selection of a few thousand rows).
const maxForm = 4 << 20

// csrfTTL is how long a rendered form stays valid.
const csrfTTL = 12 * time.Hour

// csrfToken returns the CSRF token of user now: the time and an HMAC of the
// user and the time.
func (h *Handler) csrfToken(user string) string {
	ts := strconv.FormatInt(h.now().Unix(), 10)
	return ts + "." + h.csrfMAC(user, ts)
}

func (h *Handler) csrfMAC(user, ts string) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte("durable-console-csrf\x00" + user + "\x00" + ts))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkCSRF reports whether token is a valid CSRF token of user, issued
// less than csrfTTL ago.
func (h *Handler) checkCSRF(user, token string) bool {
	ts, mac, ok := strings.Cut(token, ".")
	if !ok {
		return false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	age := h.now().Sub(time.Unix(sec, 0))
	if age < -time.Minute || age > csrfTTL {
		return false
	}
	return hmac.Equal([]byte(mac), []byte(h.csrfMAC(user, ts)))
}
