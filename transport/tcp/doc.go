// Package tcp carries transport batches over TCP: a [Client] that implements
// transport.Sender and a [Server] that serves a transport.Handler, speaking the length-prefixed
// binary protocol specified in PROTOCOL.md beside this file.
//
// # Server
//
//	srv, err := tcp.NewServer(inbox, &tcp.ServerConfig{Secret: secret, Logger: logger})
//	if err != nil { ... }
//	go srv.ListenAndServe(":7400")
//	...
//	srv.Shutdown(ctx) // GOAWAY, then drain the batches in flight
//
// A batch reaches the Handler only from an authenticated connection, and is acknowledged only
// after the Handler returned nil. Batches in flight on one connection are delivered
// concurrently (up to ServerConfig.MaxInFlight); a sender that needs order waits for each ACK.
//
// # Client
//
//	c, err := tcp.NewClient("billing.internal:7400", &tcp.ClientConfig{Secret: secret, NodeID: "orders-1"})
//	if err != nil { ... }
//	defer c.Close(ctx)
//	res, err := c.Send(ctx, &transport.Batch{Envelopes: envs})
//	if err != nil && transport.IsRetryable(err) { /* try again later */ }
//
// The Client keeps one connection, pipelines up to ClientConfig.MaxInFlight batches on it,
// reconnects with exponential backoff and jitter, and opens a circuit after repeated failures
// that closes again when a PING succeeds.
//
// # Several instances of a peer
//
// A [Balancer] is a transport.Sender over several instances of one peer, receivers that share
// one inbox database:
//
//	b, err := tcp.NewBalancer([]string{"billing.internal:7400"}, &tcp.ClientConfig{Secret: secret}, nil)
//
// Each address is an instance, and a host name stands for every address it resolves to, looked
// up again every BalancerConfig.ResolveInterval (a failed lookup keeps the instances it had).
// The Balancer keeps a Client per instance and sends each batch to a healthy instance with the
// fewest batches in flight, avoiding instances whose oldest batch is unanswered for
// BalancerConfig.SlowAfter. A batch whose send fails for a reason of the connection or the
// instance goes to another instance at once, and the failing instance is probed in the
// background until it answers; a NACK is returned as it is, since every instance shares the
// database that failed. Per-key order is the relay's: it claims a key's next message only after
// the previous one's ACK, whichever instance sent it. Instances() reports each instance's
// state, logs name it as "instance", and BalancerConfig.MeterProvider receives sends by
// instance and outcome, batches in flight and health per instance.
//
// # Security
//
// Set ServerConfig.TLS and ClientConfig.TLS for TLS 1.3; with ClientAuth set to
// tls.RequireAndVerifyClientCert and ClientCAs to the CAs of the clients' certificates the server
// requires client certificates (mutual TLS; NewServer refuses it without ClientCAs). On top
// of TLS, or instead of it on a trusted network, peers authenticate in the HELLO frame with an
// HMAC over a per-connection server nonce and a timestamp (a shared Secret, so a captured HELLO
// cannot be replayed), or with a token checked by a [Verifier]. A peer that has not
// authenticated within ServerConfig.AuthTimeout is disconnected; frames larger than the
// configured maximum are refused from their header, before any allocation.
//
// # Rotating the secret
//
// ServerConfig.AcceptSecrets lets a server accept older or newer secrets besides Secret, so a
// shared secret is replaced in three rolling restarts without a moment in which peers refuse
// each other:
//
//  1. every server: Secret old, AcceptSecrets [new] (clients still send old);
//  2. every client: Secret new; every server: Secret new, AcceptSecrets [old];
//  3. once no server logs "older secret of AcceptSecrets" any more: AcceptSecrets empty.
//
// The server answers each client with the proof of the secret that client sent, and a
// [Verifier] sees which one it was in Hello.Secret.
//
// # Limits
//
// Connections that have not authenticated yet are bounded apart from authenticated ones:
// ServerConfig.MaxHandshakes in all (default 1024) and MaxHandshakesPerAddr per remote IP
// address (default: MaxHandshakes). A new connection is never refused for them; instead the server closes
// the oldest handshake, of the newcomer's address or else of the address holding the most, with
// an ERROR frame of code busy, and logs the evictions at most once a second. A peer that
// connects and never authenticates therefore cannot lock real clients out, however fast it
// reconnects: a client that answers CHALLENGE within a round trip is closed only if a whole
// budget of newer connections (from its own address, when it shares one with the flood)
// arrives during its handshake. Until it authenticated, a connection costs no read buffer.
//
// ServerConfig.MaxConns bounds authenticated connections (default 1024); a client that
// authenticates beyond it is answered busy instead of WELCOME. The Client reports busy as a
// retryable transport.ErrUnavailable and reconnects with backoff.
//
// MaxBatchMemory (per connection, default 64 MiB) and MaxServerBatchMemory (default 256 MiB)
// bound the memory that batches hold from the moment their frame is read until Deliver
// returns. While they are used up, the server reads nothing more from the connection, so TCP
// flow control holds the client back; a batch larger than a budget is handled alone.
//
// # Performance
//
// The codec uses no reflection. Decoding a batch costs two allocations per frame (the envelope
// slice and one block holding every string of the frame) plus one map per envelope that has
// headers; payloads are sub-slices of the frame buffer, which the Handler owns. Run
// go test -bench . for envelopes per second through a real Client and Server on 127.0.0.1,
// next to a plain length-prefixed TCP echo.
package tcp
