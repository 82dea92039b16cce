package keyscan

import "testing"

func TestCursors(t *testing.T) {
	var c Cursors
	if got := c.Start("billing"); got != "" {
		t.Fatalf("first start = %q, want \"\"", got)
	}
	c.Visited("billing", "", []string{"a", "b", "c"}, 3)
	if got := c.Start("billing"); got != "c" {
		t.Fatalf("after a full scan start = %q, want c", got)
	}
	if got := c.Start("other"); got != "" {
		t.Fatalf("another destination starts at %q, want \"\"", got)
	}
	// A stale claim (it started at "" while the cursor moved on) changes nothing.
	c.Visited("billing", "", []string{"a"}, 3)
	if got := c.Start("billing"); got != "c" {
		t.Fatalf("after a stale report start = %q, want c", got)
	}
	// Reaching the end wraps around.
	c.Visited("billing", "c", []string{"d"}, 3)
	if got := c.Start("billing"); got != "" {
		t.Fatalf("after the end start = %q, want \"\"", got)
	}
	c.Visited("billing", "", nil, 3)
	if got := c.Start("billing"); got != "" {
		t.Fatalf("with no keys start = %q, want \"\"", got)
	}
}

func TestPerClaim(t *testing.T) {
	for _, tc := range []struct{ limit, want int }{{0, 1}, {1, 1}, {256, 256}, {5000, maxPerClaim}} {
		if got := PerClaim(tc.limit); got != tc.want {
			t.Errorf("PerClaim(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}
