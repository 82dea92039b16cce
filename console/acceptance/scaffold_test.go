package acceptance

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/durable-go/durable/dialects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dialectsUnderTest opens each database the tests run on.
var dialectsUnderTest = []struct {
	name string
	open func(*testing.T) *env
}{
	{"sqlite", openSQLite},
	{"postgres", openPostgres},
}

// The seeding and the node the browser tests stand on: the seeded rows are
// where the console will look for them, and a dead letter replayed through
// the dialect is handled by the running node.
func TestScaffolding(t *testing.T) {
	for _, db := range dialectsUnderTest {
		t.Run(db.name, func(t *testing.T) {
			e := db.open(t)
			e.seed(t)
			ctx := context.Background()
			stats, err := e.d.OutboxStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var backlog int64
			for _, s := range stats {
				if s.Destination == backlogTo {
					backlog = s.Unsent
				}
			}
			if backlog != backlogCount {
				t.Fatalf("backlog of %s = %d, want %d (%+v)", backlogTo, backlog, backlogCount, stats)
			}
			dl, err := e.d.ListDeadLetters(ctx, dialects.DeadLetterQuery{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range dl {
				got = append(got, r.Side+"/"+r.Reason+"/"+r.ID)
			}
			want := []string{"outbox/rejected/legacy-4001", "outbox/rejected/legacy-4002", "inbox/handler_error/" + replayID,
				"inbox/handler_error/" + keepID, "inbox/permanent/" + refundID, "inbox/decode_error/" + xssID}
			if len(got) != len(want) {
				t.Fatalf("dead letters %v, want %v", got, want)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("dead letters %v, want %v", got, want)
				}
			}
			if r := dl[2]; len(r.Errors) != 2 || r.Attempts != 2 || string(r.Payload) == "" {
				t.Fatalf("dead letter %s: %d errors, %d attempts", r.ID, len(r.Errors), r.Attempts)
			}

			n := e.startNode(t)
			e.enqueue(t, n, billing, "hello-1")
			waitFor(t, "hello-1 handled through the node's own peer", func() bool { return e.handled(t, "hello-1") })
			if c, err := e.d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideInbox, IDs: []string{replayID}}); err != nil || c != 1 {
				t.Fatalf("replay = %d, %v", c, err)
			}
			waitFor(t, replayID+" handled after its replay", func() bool { return e.handled(t, replayID) })
		})
	}
}
