package demo

import "testing"

func TestPoisonSelection(t *testing.T) {
	for _, tc := range []struct {
		n    int
		rate float64
		want int
	}{
		{10_000, 0.005, 50}, {300, 0.02, 6}, {300, 0.01, 3}, {7, 0.5, 3}, {10, 1, 10}, {10, 0, 0}, {199, 0.005, 0}, {3, 0.1, 0},
	} {
		p := poisonCount(tc.n, tc.rate)
		got := 0
		for i := range tc.n {
			if isPoison(i, tc.n, p) {
				got++
			}
		}
		if p != tc.want || got != tc.want {
			t.Errorf("n=%d rate=%g: poisonCount %d, %d selected; want %d", tc.n, tc.rate, p, got, tc.want)
		}
	}
}

func TestFormatting(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := count(in); got != want {
			t.Errorf("count(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[int]string{1: "1st", 2: "2nd", 3: "3rd", 11: "11th", 12: "12th", 22: "22nd", 200: "200th"} {
		if got := ordinal(in); got != want {
			t.Errorf("ordinal(%d) = %q, want %q", in, got, want)
		}
	}
	if got := percentileMS([]int64{1e6, 2e6, 3e6, 4e6}, 0.5); got != 2 {
		t.Errorf("p50 of 1..4 ms = %v, want 2", got)
	}
	if got := percentileMS([]int64{1e6, 2e6, 3e6, 4e6}, 0.99); got != 4 {
		t.Errorf("p99 of 1..4 ms = %v, want 4", got)
	}
}
