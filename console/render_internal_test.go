package console

import "testing"

func TestViewPayload(t *testing.T) {
	for _, c := range []struct {
		in           []byte
		format, text string
	}{
		{nil, "empty", ""},
		{[]byte(`{"a":[1,2]}`), "json", "{\n  \"a\": [\n    1,\n    2\n  ]\n}"},
		{[]byte("plain text\nline 2"), "text", "plain text\nline 2"},
		{[]byte{0x00, 0xff, 0x10}, "hex", "00000000  00 ff 10                                          |...|\n"},
	} {
		v := viewPayload(c.in)
		if v.Format != c.format || v.Text != c.text || v.Size != len(c.in) {
			t.Errorf("viewPayload(%q) = %+v, want %s %q", c.in, v, c.format, c.text)
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[int64]int64{1: 1, 3: 5, 5: 5, 6: 10, 11: 20, 140: 200, 501: 1000} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", in, got, want)
		}
	}
}
