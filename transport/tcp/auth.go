package tcp

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"net"
	"time"
)

// Hello describes a connecting peer to a [Verifier]. It is valid only during the call.
type Hello struct {
	NodeID     string               // node id the peer claims; becomes transport.Batch.Source
	Token      []byte               // ClientConfig.Token of the peer, if it sent one
	HMAC       bool                 // the peer proved ServerConfig.Secret or one of AcceptSecrets (checked before the Verifier runs)
	Secret     int                  // with HMAC: 0 for ServerConfig.Secret, i+1 for AcceptSecrets[i]
	Time       time.Time            // the peer's clock when it sent HELLO
	Nonce      []byte               // this connection's challenge nonce, fresh and random
	RemoteAddr net.Addr             // the peer's address
	TLS        *tls.ConnectionState // the TLS state, nil on a plain connection
}

// Verifier decides whether a peer may connect. A nil error admits the peer; any other error
// refuses it: the peer receives an ERROR frame with code auth and the error's text, and the
// connection is closed before anything reaches the Handler. ctx expires at the server's
// AuthTimeout.
//
// A Verifier can check a bearer token (Hello.Token), restrict node ids, or tie the node id to
// the client certificate of a mutual-TLS connection (Hello.TLS.PeerCertificates). A bearer
// token can be replayed by whoever sees it, so send tokens only over TLS.
type Verifier func(ctx context.Context, h *Hello) error

// helloMAC computes the HMAC-SHA256 credential of a HELLO (see PROTOCOL.md, "Authentication").
func helloMAC(secret []byte, version uint8, timeMillis int64, serverNonce, clientNonce *[nonceLen]byte, nodeID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("DRBL-HELLO"))
	var b [1 + 8]byte
	b[0] = version
	binary.BigEndian.PutUint64(b[1:], uint64(timeMillis))
	m.Write(b[:])
	m.Write(serverNonce[:])
	m.Write(clientNonce[:])
	m.Write(appendStr16(nil, nodeID))
	return m.Sum(nil)
}

// welcomeProof computes the server's proof of the shared secret carried by WELCOME.
func welcomeProof(secret []byte, version uint8, serverNonce, clientNonce *[nonceLen]byte, serverID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("DRBL-WELCOME"))
	m.Write([]byte{version})
	m.Write(serverNonce[:])
	m.Write(clientNonce[:])
	m.Write(appendStr16(nil, serverID))
	return m.Sum(nil)
}

func newNonce() (n [nonceLen]byte) {
	rand.Read(n[:]) // never returns an error (crypto/rand panics rather)
	return n
}
