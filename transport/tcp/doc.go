// Package tcp carries transport batches over TCP: a [Client] that implements
// transport.Sender and a [Server] that serves a transport.Handler, speaking the length-prefixed
// binary protocol specified in PROTOCOL.md beside this file.
//
// # Server
//
//	srv, err := tcp.NewServer(inbox, tcp.ServerConfig{Secret: secret, Logger: logger})
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
//	c, err := tcp.NewClient("billing.internal:7400", tcp.ClientConfig{Secret: secret, NodeID: "orders-1"})
//	if err != nil { ... }
//	defer c.Close(ctx)
//	res, err := c.Send(ctx, &transport.Batch{Envelopes: envs})
//	if err != nil && transport.IsRetryable(err) { /* try again later */ }
//
// The Client keeps one connection, pipelines up to ClientConfig.MaxInFlight batches on it,
// reconnects with exponential backoff and jitter, and opens a circuit after repeated failures
// that closes again when a PING succeeds.
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
// # Performance
//
// The codec uses no reflection. Decoding a batch costs two allocations per frame (the envelope
// slice and one block holding every string of the frame) plus one map per envelope that has
// headers; payloads are sub-slices of the frame buffer, which the Handler owns. Run
// go test -bench . for envelopes per second through a real Client and Server on 127.0.0.1,
// next to a plain length-prefixed TCP echo.
package tcp
