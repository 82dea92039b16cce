package tcp

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

func countingHandler(n *atomic.Int64) transport.Handler {
	return transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		n.Add(1)
		return transport.Result{}, nil
	})
}

func TestWrongSecretRefused(t *testing.T) {
	var delivered atomic.Int64
	slog, sink := newLog(t)
	srv := startServer(t, countingHandler(&delivered), ServerConfig{Logger: slog})
	clog, csink := newLog(t)
	c := newClient(t, srv.addr, ClientConfig{Secret: []byte("wrong"), Logger: clog, BreakerThreshold: -1})
	_, err := c.Send(testCtx(t), oneBatch("a"))
	if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "wrong shared secret") {
		t.Fatalf("client error %v, want ErrAuth naming the wrong secret", err)
	}
	sink.waitFor(t, "authentication failed", "HMAC does not match")
	csink.waitFor(t, "handshake failed", "wrong shared secret")
	if delivered.Load() != 0 {
		t.Fatal("the Handler saw a batch from an unauthenticated peer")
	}
}

func TestReplayedHelloRefused(t *testing.T) {
	var delivered atomic.Int64
	log, sink := newLog(t)
	srv := startServer(t, countingHandler(&delivered), ServerConfig{Logger: log})

	// Capture a valid HELLO on a first connection.
	first := dialRaw(t, srv.addr)
	captured := first.handshake()

	// Replay it verbatim on a second connection: it answers the first connection's nonce.
	second := dialRaw(t, srv.addr)
	second.challenge()
	second.write(captured)
	m := second.expectError(codeAuth)
	if !strings.Contains(m.msg, "replayed HELLO") {
		t.Fatalf("ERROR %q does not say the HELLO was replayed", m.msg)
	}
	sink.waitFor(t, "authentication failed", "replayed HELLO")

	// Splice the new nonce into the captured HELLO: the MAC no longer matches.
	third := dialRaw(t, srv.addr)
	ch := third.challenge()
	h, err := decodeHello(captured[frameHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	h.serverNonce = ch.nonce
	forged, _ := appendHello(nil, &h)
	third.write(forged)
	if m := third.expectError(codeAuth); !strings.Contains(m.msg, "HMAC does not match") {
		t.Fatalf("forged HELLO: ERROR %q", m.msg)
	}

	// A HELLO from too long ago is refused even with a fresh nonce and a valid MAC.
	fourth := dialRaw(t, srv.addr)
	fourth.write(hello(fourth.challenge(), testSecret, func(h *helloMsg) { h.timeMillis -= int64(10 * time.Minute / time.Millisecond) }))
	if m := fourth.expectError(codeAuth); !strings.Contains(m.msg, "clock skew") {
		t.Fatalf("stale HELLO: ERROR %q", m.msg)
	}
	if delivered.Load() != 0 {
		t.Fatal("the Handler saw a batch")
	}
}

// TestSilentPeerClosedAtAuthDeadline: a peer that connects and says nothing is closed when the
// auth deadline passes, with a reason in the log and on the wire (goleak in TestMain checks no
// goroutine is left behind).
func TestSilentPeerClosedAtAuthDeadline(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log, AuthTimeout: 150 * time.Millisecond})
	start := time.Now()
	r := dialRaw(t, srv.addr)
	r.challenge()
	m := r.expectError(codeTimeout)
	// Not before the deadline; and well before the default AuthTimeout of 5s, so that a server
	// ignoring the configured one would fail (the margin is 30 times the deadline, for a slow
	// machine's late timer).
	if d := time.Since(start); d < 140*time.Millisecond || d > 4500*time.Millisecond {
		t.Fatalf("closed after %v, want about 150ms", d)
	}
	if !strings.Contains(m.msg, "auth deadline") {
		t.Fatalf("ERROR %q", m.msg)
	}
	sink.waitFor(t, "no HELLO within the auth deadline")
}

func TestVersionNegotiation(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log})
	r := dialRaw(t, srv.addr)
	r.write(hello(r.challenge(), testSecret, func(h *helloMsg) { h.version = 9 }))
	m := r.expectError(codeVersion)
	if !strings.Contains(m.msg, "unsupported protocol version 9 (this server speaks 1..1)") {
		t.Fatalf("ERROR %q", m.msg)
	}
	sink.waitFor(t, "unsupported protocol version 9")

	// A future server that speaks only versions 2..3: the client refuses with a clear error.
	ln := listenFake(t, func(r *rawConn) {
		r.write(appendChallenge(nil, &challengeMsg{minVersion: 2, maxVersion: 3, nonce: newNonce()}))
		t, body, err := r.read()
		if err != nil || t != frameError {
			return
		}
		m, _ := decodeError(body)
		r.write([]byte(m.msg)) // echo nothing useful; the client has closed
	})
	c := newClient(t, ln, ClientConfig{BreakerThreshold: -1})
	_, err := c.Send(testCtx(t), oneBatch("a"))
	if !errors.Is(err, transport.ErrVersion) || !strings.Contains(err.Error(), "server speaks 2..3, this client 1..1") {
		t.Fatalf("client error %v", err)
	}
}

func TestServerMustProveSecret(t *testing.T) {
	// A server without the secret (here: Insecure) cannot produce the WELCOME proof.
	srv := startServer(t, acceptAll(), ServerConfig{Insecure: true})
	c := newClient(t, srv.addr, ClientConfig{Secret: testSecret, BreakerThreshold: -1})
	_, err := c.Send(testCtx(t), oneBatch("a"))
	if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "did not prove the shared secret") {
		t.Fatalf("err %v", err)
	}
}

func TestVerifierAndToken(t *testing.T) {
	var source atomic.Value
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		source.Store(b.Source)
		return transport.Result{}, nil
	})
	verify := func(ctx context.Context, h *Hello) error {
		if string(h.Token) != "s3cret-token" || h.NodeID != "billing-1" || len(h.Nonce) != nonceLen {
			return errors.New("unknown token for this node")
		}
		return nil
	}
	srv := startServer(t, h, ServerConfig{Verify: verify})
	good := newClient(t, srv.addr, ClientConfig{Token: []byte("s3cret-token"), NodeID: "billing-1"})
	if _, err := good.Send(testCtx(t), oneBatch("a")); err != nil {
		t.Fatal(err)
	}
	if s := source.Load(); s != "billing-1" {
		t.Fatalf("Batch.Source %q", s)
	}
	bad := newClient(t, srv.addr, ClientConfig{Token: []byte("guess"), NodeID: "billing-1", BreakerThreshold: -1})
	if _, err := bad.Send(testCtx(t), oneBatch("a")); !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "unknown token") {
		t.Fatalf("err %v", err)
	}
	// A server with a Secret refuses a token-only client.
	srv2 := startServer(t, h, ServerConfig{Secret: testSecret})
	tok := newClient(t, srv2.addr, ClientConfig{Token: []byte("t"), BreakerThreshold: -1})
	if _, err := tok.Send(testCtx(t), oneBatch("a")); !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "requires HMAC") {
		t.Fatalf("err %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := NewServer(acceptAll(), &ServerConfig{}); err == nil || !strings.Contains(err.Error(), "no authentication") {
		t.Fatalf("NewServer without auth: %v", err)
	}
	if _, err := NewServer(nil, &ServerConfig{Insecure: true}); err == nil {
		t.Fatal("NewServer(nil) succeeded")
	}
	if _, err := NewClient("x:1", &ClientConfig{Secret: []byte("a"), Token: []byte("b")}); err == nil {
		t.Fatal("Secret and Token together accepted")
	}
	if _, err := NewClient("", &ClientConfig{}); err == nil {
		t.Fatal("empty address accepted")
	}
}

// TestSecretRotation walks the three steps of a rotation (see the package documentation): at
// each step every client configuration still connects, the server proves the secret the
// client used (the client checks the WELCOME proof with its own), a Verifier learns which
// secret matched, and a secret outside the accepted ones is still refused.
func TestSecretRotation(t *testing.T) {
	old, new := []byte("old secret"), []byte("new secret")
	type step struct {
		name   string
		server ServerConfig
		ok     map[string]int // client secret → Hello.Secret
	}
	steps := []step{
		{"1: accept the new one", ServerConfig{Secret: old, AcceptSecrets: [][]byte{new}}, map[string]int{"old secret": 0, "new secret": 1}},
		{"2: move to the new one", ServerConfig{Secret: new, AcceptSecrets: [][]byte{old}}, map[string]int{"old secret": 1, "new secret": 0}},
		{"3: drop the old one", ServerConfig{Secret: new}, map[string]int{"new secret": 0}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var seen atomic.Int64
			st.server.Verify = func(_ context.Context, h *Hello) error {
				if !h.HMAC {
					return errors.New("no HMAC")
				}
				seen.Store(int64(h.Secret))
				return nil
			}
			log, sink := newLog(t)
			st.server.Logger = log
			var delivered atomic.Int64
			srv := startServer(t, countingHandler(&delivered), st.server)
			for _, secret := range []string{"old secret", "new secret", "another secret"} {
				want, accepted := st.ok[secret]
				seen.Store(-1)
				c := newClient(t, srv.addr, ClientConfig{Secret: []byte(secret), BreakerThreshold: -1})
				_, err := c.Send(testCtx(t), oneBatch(secret))
				switch {
				case accepted && err != nil:
					t.Fatalf("client with %q: %v", secret, err)
				case accepted && seen.Load() != int64(want):
					t.Fatalf("client with %q: Hello.Secret %d, want %d", secret, seen.Load(), want)
				case !accepted && (!errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "wrong shared secret")):
					t.Fatalf("client with %q: %v, want ErrAuth", secret, err)
				}
			}
			if want := int64(len(st.ok)); delivered.Load() != want {
				t.Fatalf("%d batches delivered, want %d", delivered.Load(), want)
			}
			_, logged := sink.find("older secret of AcceptSecrets", "accept_secret=0")
			if logged != (len(st.ok) == 2) {
				t.Fatalf("log of an older secret: %v, want %v\n%s", logged, len(st.ok) == 2, sink.dump())
			}
		})
	}
}

func TestAcceptSecretsValidation(t *testing.T) {
	if _, err := NewServer(acceptAll(), &ServerConfig{Insecure: true, AcceptSecrets: [][]byte{[]byte("a")}}); err == nil || !strings.Contains(err.Error(), "AcceptSecrets requires Secret") {
		t.Fatalf("AcceptSecrets without Secret: %v", err)
	}
	if _, err := NewServer(acceptAll(), &ServerConfig{Secret: []byte("a"), AcceptSecrets: [][]byte{nil}}); err == nil || !strings.Contains(err.Error(), "AcceptSecrets[0] is empty") {
		t.Fatalf("empty accepted secret: %v", err)
	}
}
