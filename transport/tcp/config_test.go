package tcp

import (
	"context"
	"strings"
	"testing"
)

// TestConstructorConfig: a nil config means every default, and the
// constructors neither keep nor change the caller's config.
func TestConstructorConfig(t *testing.T) {
	c, err := NewClient("127.0.0.1:1", nil)
	if err != nil {
		t.Fatalf("NewClient(addr, nil) = %v", err)
	}
	if c.cfg.DialTimeout != DefaultDialTimeout || c.cfg.MaxInFlight != DefaultClientMaxInFlight || c.cfg.BreakerThreshold != DefaultBreakerThreshold {
		t.Errorf("NewClient(addr, nil): config %+v, want the defaults", c.cfg)
	}
	c.Close(context.Background())

	ccfg := &ClientConfig{Secret: testSecret}
	c, err = NewClient("127.0.0.1:1", ccfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	if ccfg.NodeID != "" || ccfg.Logger != nil || ccfg.DialTimeout != 0 || ccfg.Dial != nil {
		t.Errorf("NewClient changed its *ClientConfig: %+v", ccfg)
	}

	if _, err := NewServer(acceptAll(), nil); err == nil || !strings.Contains(err.Error(), "no authentication") {
		t.Errorf("NewServer(h, nil) = %v, want an error asking for authentication", err)
	}
	scfg := &ServerConfig{Secret: testSecret}
	s, err := NewServer(acceptAll(), scfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.AuthTimeout != DefaultAuthTimeout || s.cfg.MaxInFlight != DefaultServerMaxInFlight || s.cfg.MaxBatchMemory != DefaultMaxBatchMemory {
		t.Errorf("NewServer: config %+v, want the defaults", s.cfg)
	}
	s.Close()
	if scfg.NodeID != "" || scfg.Logger != nil || scfg.AuthTimeout != 0 || scfg.MaxConns != 0 {
		t.Errorf("NewServer changed its *ServerConfig: %+v", scfg)
	}
}
