package history

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func msg(id string) Message { return Message{ID: id, Source: "orders", Destination: "billing"} }

func TestCleanHistory(t *testing.T) {
	h := New()
	h.Committed(msg("a"), msg("b"))
	h.Committed(msg("a")) // recorded twice: harmless
	h.Effect("billing", "a")
	h.AddEffects("billing", map[string]int{"b": 1, "never": 0})
	r := h.Report()
	if !r.OK() || h.Check() != nil {
		t.Fatalf("clean history failed: %v", h.Check())
	}
	if r.Committed != 2 || r.Effects != 2 || r.Uncertain != 0 {
		t.Fatalf("report = %+v", r)
	}
	if got := r.Summary(); !strings.HasPrefix(got, "0 lost, 0 duplicate effects, 0 unexpected (2 committed") {
		t.Fatalf("summary = %q", got)
	}
}

func TestLostDuplicateUnexpected(t *testing.T) {
	h := New()
	h.Committed(msg("ok"), msg("lost-2"), msg("lost-1"), msg("dup"))
	h.Effect("billing", "ok")
	h.AddEffects("billing", map[string]int{"dup": 3, "ghost": 1, "ghost-twice": 2})
	r := h.Report()
	if r.OK() {
		t.Fatal("report OK")
	}
	if len(r.Lost) != 2 || r.Lost[0].ID != "lost-1" || r.Lost[1].ID != "lost-2" {
		t.Fatalf("lost = %v (want sorted lost-1, lost-2)", r.Lost)
	}
	if len(r.Duplicates) != 2 || r.Duplicates[0].ID != "dup" || r.Duplicates[0].Effects != 3 ||
		r.Duplicates[1].ID != "ghost-twice" || r.Duplicates[1].Effects != 2 {
		t.Fatalf("duplicates = %v", r.Duplicates)
	}
	if len(r.Unexpected) != 2 || r.Unexpected[0].ID != "ghost" || r.Unexpected[1].ID != "ghost-twice" {
		t.Fatalf("unexpected = %v", r.Unexpected)
	}
	if r.Effects != 7 {
		t.Fatalf("effects = %d, want 7", r.Effects)
	}
	want := `history: 2 lost, 2 duplicate effects, 2 unexpected (4 committed, 0 uncertain of which 0 delivered, 7 effects)
lost (committed, no effect): 2
	orders→billing lost-1
	orders→billing lost-2
duplicate effects: 2
	orders→billing dup ×3
	billing ghost-twice ×2
unexpected effects (never committed): 2
	billing ghost ×1
	billing ghost-twice ×2`
	if got := h.Check().Error(); got != want {
		t.Fatalf("error:\n%s\nwant:\n%s", got, want)
	}
}

func TestUncertainMessages(t *testing.T) {
	h := New()
	h.Uncertain(msg("none"), msg("one"), msg("two"), msg("upgraded"))
	h.Committed(msg("upgraded"), msg("kept"))
	h.Uncertain(msg("kept")) // does not downgrade
	h.AddEffects("billing", map[string]int{"one": 1, "two": 2})
	r := h.Report()
	if r.Uncertain != 3 || r.UncertainDelivered != 1 || r.Committed != 2 {
		t.Fatalf("report = %+v", r)
	}
	// "none" may be lost; "upgraded" and "kept" are committed and lost.
	if len(r.Lost) != 2 || r.Lost[0].ID != "kept" || r.Lost[1].ID != "upgraded" {
		t.Fatalf("lost = %v", r.Lost)
	}
	if len(r.Duplicates) != 1 || r.Duplicates[0].ID != "two" {
		t.Fatalf("an uncertain message with two effects is a duplicate: %v", r.Duplicates)
	}
	if len(r.Unexpected) != 0 {
		t.Fatalf("unexpected = %v", r.Unexpected)
	}
}

// One message id sent to two destinations needs one effect in each.
func TestDestinationsAreSeparate(t *testing.T) {
	h := New()
	h.Committed(Message{ID: "m", Destination: "billing"}, Message{ID: "m", Destination: "shipping"})
	h.Effect("billing", "m")
	h.Effect("audit", "m")
	r := h.Report()
	if len(r.Lost) != 1 || r.Lost[0].Destination != "shipping" {
		t.Fatalf("lost = %v", r.Lost)
	}
	if len(r.Unexpected) != 1 || r.Unexpected[0].Destination != "audit" {
		t.Fatalf("unexpected = %v", r.Unexpected)
	}
	if len(r.Duplicates) != 0 {
		t.Fatalf("duplicates = %v", r.Duplicates)
	}
	if got := r.Lost[0].String(); got != "shipping m" {
		t.Fatalf("String without source = %q", got)
	}
}

func TestErrorListsAreCapped(t *testing.T) {
	h := New()
	for i := range 100 {
		h.Committed(msg(fmt.Sprintf("m%03d", i)))
	}
	err := h.Check()
	if err == nil {
		t.Fatal("no error")
	}
	s := err.Error()
	if !strings.Contains(s, "lost (committed, no effect): 100") || !strings.Contains(s, "... and 75 more") ||
		!strings.Contains(s, "m024") || strings.Contains(s, "m025") {
		t.Fatalf("error = %s", s)
	}
	if r := h.Report(); len(r.Lost) != 100 {
		t.Fatalf("Report keeps all: %d", len(r.Lost))
	}
}

func TestConcurrentRecording(t *testing.T) {
	h := New()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				id := fmt.Sprintf("w%d-%d", w, i)
				h.Committed(msg(id))
				h.Effect("billing", id)
				if i%100 == 0 {
					_ = h.Report()
				}
			}
		}()
	}
	wg.Wait()
	if err := h.Check(); err != nil {
		t.Fatal(err)
	}
	if r := h.Report(); r.Committed != 4000 || r.Effects != 4000 {
		t.Fatalf("report = %+v", r)
	}
}
