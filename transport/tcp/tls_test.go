package tcp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// testCA is a certificate authority made in memory for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial atomic.Int64

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue signs a leaf certificate for name, valid from notBefore to notAfter.
func (ca *testCA) issue(t testing.TB, name string, server bool, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (ca *testCA) valid(t testing.TB, name string, server bool) tls.Certificate {
	return ca.issue(t, name, server, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
}

func TestTLS(t *testing.T) {
	ca := newCA(t, "durable test CA")
	serverCert := ca.valid(t, "server", true)
	var version atomic.Uint32
	verify := func(ctx context.Context, h *Hello) error {
		if h.TLS == nil {
			return errors.New("no TLS")
		}
		version.Store(uint32(h.TLS.Version))
		return nil
	}
	srv := startServer(t, acceptAll(), ServerConfig{
		Secret: testSecret,
		Verify: verify,
		TLS:    &tls.Config{Certificates: []tls.Certificate{serverCert}},
	})

	t.Run("right CA", func(t *testing.T) {
		c := newClient(t, srv.addr, ClientConfig{Secret: testSecret, TLS: &tls.Config{RootCAs: ca.pool}})
		if _, err := c.Send(testCtx(t), oneBatch("a")); err != nil {
			t.Fatal(err)
		}
		if v := version.Load(); v != tls.VersionTLS13 {
			t.Fatalf("TLS version %x, want 1.3", v)
		}
	})
	t.Run("untrusted server", func(t *testing.T) {
		other := newCA(t, "other CA")
		c := newClient(t, srv.addr, ClientConfig{Secret: testSecret, TLS: &tls.Config{RootCAs: other.pool}, BreakerThreshold: -1})
		_, err := c.Send(testCtx(t), oneBatch("a"))
		if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("TLS 1.2 refused", func(t *testing.T) {
		c := newClient(t, srv.addr, ClientConfig{BreakerThreshold: -1})
		c.tls = &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12} // bypass tls13()
		if _, err := c.Send(testCtx(t), oneBatch("a")); err == nil {
			t.Fatal("TLS 1.2 handshake succeeded")
		}
	})
	t.Run("plain client", func(t *testing.T) {
		c := newClient(t, srv.addr, ClientConfig{BreakerThreshold: -1, HandshakeTimeout: 200 * time.Millisecond})
		if _, err := c.Send(testCtx(t), oneBatch("a")); err == nil {
			t.Fatal("plain TCP client accepted by a TLS server")
		}
	})
}

// TestMutualTLS: with client certificates required, a client without one, with one from another
// CA, or with an expired one is refused during the handshake, and the Handler sees nothing.
func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "durable test CA")
	other := newCA(t, "other CA")
	var delivered atomic.Int64
	var peerCN atomic.Value
	log, sink := newLog(t)
	srv := startServer(t, countingHandler(&delivered), ServerConfig{
		Logger: log,
		TLS: &tls.Config{
			Certificates: []tls.Certificate{ca.valid(t, "server", true)},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.pool,
		},
		Verify: func(ctx context.Context, h *Hello) error {
			cn := h.TLS.PeerCertificates[0].Subject.CommonName
			peerCN.Store(cn)
			if cn != h.NodeID {
				return errors.New("node id does not match the client certificate")
			}
			return nil
		},
	})
	// The client presents its certificate whatever CAs the server asks for, as an attacker
	// would (crypto/tls would otherwise withhold a certificate of another CA).
	clientTLS := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: ca.pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if len(certs) == 0 {
				return &tls.Certificate{}, nil
			}
			return &certs[0], nil
		}}
	}

	good := newClient(t, srv.addr, ClientConfig{NodeID: "relay-1", TLS: clientTLS(ca.valid(t, "relay-1", false))})
	if _, err := good.Send(testCtx(t), oneBatch("a")); err != nil {
		t.Fatal(err)
	}
	if peerCN.Load() != "relay-1" || delivered.Load() != 1 {
		t.Fatalf("peer %v, delivered %d", peerCN.Load(), delivered.Load())
	}

	cases := []struct {
		name string
		cfg  *tls.Config
		log  string
	}{
		{"no client cert", clientTLS(), "certificate"},
		{"other CA", clientTLS(other.valid(t, "relay-1", false)), "unknown authority"},
		{"expired", clientTLS(ca.issue(t, "relay-1", false, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))), "expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, srv.addr, ClientConfig{NodeID: "relay-1", TLS: tc.cfg, BreakerThreshold: -1})
			_, err := c.Send(testCtx(t), oneBatch("b"))
			if err == nil {
				t.Fatal("handshake succeeded")
			}
			if !errors.Is(err, transport.ErrAuth) || !transport.IsRetryable(err) {
				t.Fatalf("client error %v, want a retryable ErrAuth", err)
			}
			sink.waitFor(t, "TLS handshake failed", tc.log)
		})
	}
	if n := delivered.Load(); n != 1 {
		t.Fatalf("Handler saw %d batches, want only the good client's", n)
	}
	// A certificate whose name differs from the claimed node id is refused by the Verifier.
	liar := newClient(t, srv.addr, ClientConfig{NodeID: "relay-2", TLS: clientTLS(ca.valid(t, "relay-1", false)), BreakerThreshold: -1})
	if _, err := liar.Send(testCtx(t), oneBatch("c")); !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("err %v", err)
	}
}

// dialRecording is a ClientConfig.Dial that records the local address of each connection, so
// that a test can find the server's log line about that connection.
func dialRecording(addrs chan<- string) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			addrs <- c.LocalAddr().String()
		}
		return c, err
	}
}

// TestTLSMismatch: a client without TLS pointed at a TLS server, and a TLS client pointed at a
// server without TLS, both fail with an error that says so, and the server logs it with the
// client's address.
func TestTLSMismatch(t *testing.T) {
	ca := newCA(t, "durable test CA")

	t.Run("plaintext client, TLS server", func(t *testing.T) {
		log, sink := newLog(t)
		// The server waits its auth deadline for a TLS handshake that never comes: the client
		// sends nothing before CHALLENGE. The deadline is short to keep the test short; the
		// client's handshake timeout is long, so the server's answer decides the outcome.
		srv := startServer(t, acceptAll(), ServerConfig{
			Logger:      log,
			Secret:      testSecret,
			TLS:         &tls.Config{Certificates: []tls.Certificate{ca.valid(t, "server", true)}},
			AuthTimeout: 300 * time.Millisecond,
		})
		clog, _ := newLog(t)
		local := make(chan string, 1)
		c, err := Dial(testCtx(t), srv.addr, &ClientConfig{
			Secret: testSecret, Logger: clog, Dial: dialRecording(local), BreakerThreshold: -1,
			DialTimeout: 30 * time.Second, HandshakeTimeout: 30 * time.Second,
		})
		if err == nil {
			c.Close(context.Background())
			t.Fatal("a client without TLS connected to a TLS server")
		}
		if !strings.Contains(err.Error(), "this server requires TLS") {
			t.Errorf("client error %q does not say that the server requires TLS", err)
		}
		if !transport.IsRetryable(err) {
			t.Errorf("client error %v is not retryable", err)
		}
		sink.waitFor(t, "closing connection: this server requires TLS", "remote="+recv(t, local, "the client's address"), "code=timeout")
	})

	t.Run("TLS client, plaintext server", func(t *testing.T) {
		log, sink := newLog(t)
		srv := startServer(t, acceptAll(), ServerConfig{Logger: log, Secret: testSecret})
		clog, _ := newLog(t)
		local := make(chan string, 1)
		c, err := Dial(testCtx(t), srv.addr, &ClientConfig{
			Secret: testSecret, TLS: &tls.Config{RootCAs: ca.pool}, Logger: clog, Dial: dialRecording(local),
			BreakerThreshold: -1, DialTimeout: 30 * time.Second, HandshakeTimeout: 30 * time.Second,
		})
		if err == nil {
			c.Close(context.Background())
			t.Fatal("a TLS client connected to a server without TLS")
		}
		if !errors.Is(err, transport.ErrProtocol) || !strings.Contains(err.Error(), "the server does not speak TLS") {
			t.Errorf("client error %q, want an ErrProtocol saying that the server does not speak TLS", err)
		}
		sink.waitFor(t, "closing connection: the client speaks TLS, but this server is configured without TLS", "remote="+recv(t, local, "the client's address"))
		if l, ok := sink.find("malformed handshake"); ok {
			t.Errorf("server logged %q for a TLS ClientHello", l)
		}
	})
}

// TestNewServerRefusesClientAuthWithoutClientCAs: verifying client certificates with no
// ClientCAs would trust every CA of the system's root store; NewServer refuses it.
func TestNewServerRefusesClientAuthWithoutClientCAs(t *testing.T) {
	ca := newCA(t, "durable test CA")
	cert := ca.valid(t, "server", true)
	for _, auth := range []tls.ClientAuthType{tls.RequireAndVerifyClientCert, tls.VerifyClientCertIfGiven} {
		_, err := NewServer(acceptAll(), &ServerConfig{Secret: testSecret, TLS: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: auth}})
		if !errors.Is(err, errNoClientCAs) || !strings.Contains(err.Error(), "ClientCAs") {
			t.Errorf("ClientAuth %v without ClientCAs: NewServer returned %v, want %v", auth, err, errNoClientCAs)
		}
	}
	ok := []*tls.Config{
		{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool},
		{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.pool},
		{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert},
		{Certificates: []tls.Certificate{cert}},
		// The per-connection configuration decides; NewServer cannot see it.
		{ClientAuth: tls.RequireAndVerifyClientCert, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }},
	}
	for i, cfg := range ok {
		if _, err := NewServer(acceptAll(), &ServerConfig{Secret: testSecret, TLS: cfg}); err != nil {
			t.Errorf("config %d: %v", i, err)
		}
	}
}
