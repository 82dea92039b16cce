package transport

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestEnvelopeValidate(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ok := func() Envelope {
		return Envelope{ID: "m-1", Topic: "t", Key: "k", Headers: map[string]string{"h": "v"}, Payload: []byte{0, 0xff},
			CreatedAt: at, DeliverAt: at.Add(time.Minute), ExpiresAt: at.Add(time.Hour), SendAttempt: 1}
	}
	long := strings.Repeat("x", MaxNameBytes+1)
	cases := []struct {
		name     string
		edit     func(*Envelope)
		field    string // "" for valid
		reason   string
		tooLarge bool
	}{
		{"valid", func(*Envelope) {}, "", "", false},
		{"empty topic and key, no headers, zero times", func(e *Envelope) {
			e.Topic, e.Key, e.Headers, e.CreatedAt, e.DeliverAt, e.ExpiresAt, e.SendAttempt = "", "", nil, time.Time{}, time.Time{}, time.Time{}, 0
		}, "", "", false},
		{"names of 255 bytes", func(e *Envelope) { e.ID, e.Topic = long[1:], long[1:] }, "", "", false},
		{"max SendAttempt", func(e *Envelope) { e.SendAttempt = math.MaxUint32 }, "", "", false},
		{"empty ID", func(e *Envelope) { e.ID = "" }, "ID", "is empty", false},
		{"long ID", func(e *Envelope) { e.ID = long }, "ID", "is longer than 255 bytes", true},
		{"NUL in topic", func(e *Envelope) { e.Topic = "a\x00b" }, "Topic", "contains a NUL byte", false},
		{"invalid UTF-8 key", func(e *Envelope) { e.Key = "\xff" }, "Key", "is not valid UTF-8", false},
		{"empty header name", func(e *Envelope) { e.Headers = map[string]string{"": "v"} }, "Headers", "has an empty name", false},
		{"long header name", func(e *Envelope) { e.Headers = map[string]string{long: "v"} }, "Headers", `name "` + long[:32] + `…" is longer than 255 bytes`, true},
		{"header value", func(e *Envelope) { e.Headers = map[string]string{"h": "\x00"} }, "Headers", `value of "h" contains a NUL byte`, false},
		{"year 10000", func(e *Envelope) { e.CreatedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "CreatedAt", "10000-01-01T00:00:00Z is outside years 1-9999", false},
		{"year 0", func(e *Envelope) { e.DeliverAt = time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC) }, "DeliverAt", "0000-12-31T00:00:00Z is outside years 1-9999", false},
		{"expires at delivery", func(e *Envelope) { e.ExpiresAt = e.DeliverAt }, "ExpiresAt", "2026-01-02T03:05:05Z is not after DeliverAt 2026-01-02T03:05:05Z", false},
		{"negative SendAttempt", func(e *Envelope) { e.SendAttempt = -1 }, "SendAttempt", "-1 is out of range", false},
	}
	for _, c := range cases {
		e := ok()
		c.edit(&e)
		err := e.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: Validate = %v, want nil", c.name, err)
			}
			continue
		}
		var ee *EnvelopeError
		if !errors.As(err, &ee) || ee.Field != c.field || ee.Reason != c.reason {
			t.Errorf("%s: Validate = %#v, want Field %q Reason %q", c.name, err, c.field, c.reason)
			continue
		}
		if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrTooLarge) != c.tooLarge {
			t.Errorf("%s: errors.Is(ErrInvalid) %v, (ErrTooLarge) %v; want true, %v", c.name, errors.Is(err, ErrInvalid), errors.Is(err, ErrTooLarge), c.tooLarge)
		}
		if IsRetryable(err) {
			t.Errorf("%s: IsRetryable = true, want false", c.name)
		}
		if want := "transport: invalid envelope: " + c.field + " " + c.reason; err.Error() != want {
			t.Errorf("%s: Error() = %q, want %q", c.name, err.Error(), want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for s, want := range map[string]string{
		"":                                  "",
		"billing":                           "",
		"ünïcødé":                           "",
		strings.Repeat("x", MaxNameBytes):   "",
		strings.Repeat("x", MaxNameBytes+1): "is longer than 255 bytes",
		"a\x00":                             "contains a NUL byte",
		"\xc3":                              "is not valid UTF-8",
	} {
		if got := CheckName(s); got != want {
			t.Errorf("CheckName(%q) = %q, want %q", s, got, want)
		}
	}
}
