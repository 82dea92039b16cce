package dialecttest

import (
	"fmt"
	"testing"

	"github.com/durable-go/durable/dialects"
)

// hotKey: a long backlog under one ordering key holds back only that key.
// A claim still takes the key's head, the heads of the other keys and the
// unkeyed rows behind the backlog, and the key drains one row per claim.
func (s relaySuite[TTx]) hotKey(t *testing.T) {
	d := s.h.Open(t)
	const hot = 2000
	rows := make([]dialects.OutboxRow, 0, hot+20)
	for i := range hot {
		rows = append(rows, keyed(dueRow(i, "billing"), "hot"))
	}
	for i := range 10 {
		rows = append(rows, keyed(dueRow(hot+i, "billing"), fmt.Sprintf("cold-%d", i)))
	}
	for i := range 10 {
		rows = append(rows, dueRow(hot+10+i, "billing"))
	}
	insert(t, d, rows...)

	want := []string{idOf(0)}
	for i := range 20 {
		want = append(want, idOf(hot+i))
	}
	c1 := claim(t, d, "billing", "t1", 50, lease)
	wantIDs(t, "claim 1: the hot key's head, the other keys' heads, the unkeyed rows", claimedIDs(c1), want...)
	wantIDs(t, "claim 2: everything left is behind a key in flight", claimedIDs(claim(t, d, "billing", "t2", 50, lease)))

	// The hot key drains one row per claim, in order, each claim finding it
	// at once however long the backlog behind it.
	n, err := d.AckOutbox(ctxFor(t), "t1", seqs(c1), false)
	count(t, "AckOutbox", n, err, len(c1))
	for i := 1; i <= 5; i++ {
		token := fmt.Sprintf("h%d", i)
		c := claim(t, d, "billing", token, 50, lease)
		wantIDs(t, fmt.Sprintf("hot claim %d", i), claimedIDs(c), idOf(i))
		n, err := d.AckOutbox(ctxFor(t), token, seqs(c), false)
		count(t, "AckOutbox", n, err, 1)
	}
}

// keyRoundRobin: with more ready keys than a claim visits, consecutive
// claims take the heads of the next keys in turn, wrapping around, so that
// no key waits behind keys that keep having rows.
func (s relaySuite[TTx]) keyRoundRobin(t *testing.T) {
	d := s.h.Open(t)
	// 30 keys of two rows each; a claim of 10 visits 10 keys.
	var rows []dialects.OutboxRow
	for k := range 30 {
		for j := range 2 {
			rows = append(rows, keyed(dueRow(j*30+k, "billing"), fmt.Sprintf("k%02d", k)))
		}
	}
	insert(t, d, rows...)
	firsts := func(from, to int) []string {
		var ids []string
		for k := from; k < to; k++ {
			ids = append(ids, idOf(k))
		}
		return ids
	}
	ctx := ctxFor(t)
	for i, want := range [][]string{firsts(0, 10), firsts(10, 20), firsts(20, 30)} {
		token := fmt.Sprintf("t%d", i)
		c := claim(t, d, "billing", token, 10, lease)
		wantIDs(t, fmt.Sprintf("claim %d", i), claimedIDs(c), want...)
		n, err := d.AckOutbox(ctx, token, seqs(c), false)
		count(t, "AckOutbox", n, err, len(c))
	}
	// Every key visited: the next claims wrap around to the second rows
	// (the claim that reaches the end of the keys finds none after them).
	var got []string
	for i := 0; i < 5 && len(got) < 30; i++ {
		got = append(got, claimedIDs(claim(t, d, "billing", fmt.Sprintf("w%d", i), 10, lease))...)
	}
	wantIDs(t, "the second rows, after wrapping around", got, firsts(30, 60)...)
}
