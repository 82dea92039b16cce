package console

import (
	"bytes"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/durable-go/durable/dialects"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// templates holds one template set per page, each the layout plus the page.
type templates struct {
	pages map[string]*template.Template
}

var funcs = template.FuncMap{
	"time": fmtTime,
	"age":  fmtAge,
	"join": strings.Join,
}

func parseTemplates() (*templates, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	t := &templates{pages: map[string]*template.Template{}}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		p, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("durable/console: template %s: %w", n, err)
		}
		t.pages[base] = p
	}
	return t, nil
}

func (t *templates) execute(w http.ResponseWriter, status int, name string, p page) error {
	tp, ok := t.pages[name]
	if !ok {
		return fmt.Errorf("no template %q", name)
	}
	var buf bytes.Buffer
	if err := tp.Execute(&buf, p); err != nil {
		http.Error(w, "500 internal server error", http.StatusInternalServerError)
		return err
	}
	w.WriteHeader(status)
	_, err := buf.WriteTo(w)
	return err
}

func assetHandler() http.Handler {
	sub, _ := fs.Sub(assetFS, "assets")
	files := http.FileServerFS(sub)
	return http.StripPrefix("/assets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=300")
		files.ServeHTTP(w, r)
	}))
}

// fmtTime formats t in UTC to the second; zero is "".
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// fmtAge formats an age to the second; 0 is "".
func fmtAge(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	if d < time.Second {
		return "<1s"
	}
	return d.Round(time.Second).String()
}

func headerFields(h map[string]string) []field {
	out := make([]field, 0, len(h))
	for k, v := range h {
		out = append(out, field{k, v})
	}
	slices.SortFunc(out, func(a, b field) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// payloadView is a payload as shown: pretty JSON, text, or a hex dump.
type payloadView struct {
	Format string // "json", "text", "hex", "empty"
	Text   string
	Size   int
}

// maxShown bounds the payload shown on a page.
const maxShown = 256 << 10

func viewPayload(b []byte) payloadView {
	v := payloadView{Size: len(b)}
	shown := b[:min(len(b), maxShown)]
	switch {
	case len(b) == 0:
		v.Format = "empty"
	case json.Valid(b):
		var buf bytes.Buffer
		if err := json.Indent(&buf, b, "", "  "); err == nil && buf.Len() <= maxShown {
			v.Format, v.Text = "json", buf.String()
		} else {
			v.Format, v.Text = "text", string(shown)
		}
	case utf8.Valid(shown) && printable(string(shown)):
		v.Format, v.Text = "text", string(shown)
	default:
		v.Format, v.Text = "hex", hex.Dump(shown)
	}
	return v
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// ---- the throughput chart

// Chart geometry, in SVG user units.
const (
	chartW, chartH   = 720, 180
	chartL, chartB   = 48, 24  // left and bottom margins
	chartT, chartR   = 10, 130 // the legend is on the right
	chartMinutes     = 60
	chartPlotW       = chartW - chartL - chartR
	chartPlotH       = chartH - chartT - chartB
	throughputKinds  = "enqueued sent handled dead_lettered"
	throughputLegend = 20
)

type chartSeries struct {
	Kind    string
	Points  string // the polyline's points
	Total   int64
	LegendY int
}

type chartTick struct {
	X, Y   int
	Label  string
	Anchor string // text-anchor
}

type chart struct {
	W, H, L, T, R, B int
	PlotBottom       int
	PlotRight        int
	LegendX          int
	Series           []chartSeries
	Max              int64
	YTicks, XTicks   []chartTick
	Empty            bool
}

// buildChart draws the throughput of the 60 minutes that end with the
// minute now (truncated), one polyline per kind.
func buildChart(tp []dialects.Throughput, now time.Time) chart {
	start := now.Add(-(chartMinutes - 1) * time.Minute)
	kinds := strings.Fields(throughputKinds)
	counts := make(map[string]*[chartMinutes]int64, len(kinds))
	for _, k := range kinds {
		counts[k] = new([chartMinutes]int64)
	}
	var peak int64
	for _, t := range tp {
		c, ok := counts[t.Kind]
		i := int(t.Minute.UTC().Sub(start) / time.Minute)
		if !ok || i < 0 || i >= chartMinutes {
			continue
		}
		c[i] += t.Count
		peak = max(peak, c[i])
	}
	ch := chart{W: chartW, H: chartH, L: chartL, T: chartT, R: chartW - chartR, B: chartH - chartB,
		PlotBottom: chartH - chartB, PlotRight: chartW - chartR, LegendX: chartW - chartR + 10, Empty: peak == 0}
	top := niceCeil(max(peak, 1))
	ch.Max = top
	x := func(i int) int { return chartL + i*chartPlotW/(chartMinutes-1) }
	y := func(v int64) int { return chartT + chartPlotH - int(v*chartPlotH/top) }
	for i, k := range kinds {
		var sb strings.Builder
		var total int64
		for m, v := range counts[k] {
			fmt.Fprintf(&sb, "%d,%d ", x(m), y(v))
			total += v
		}
		ch.Series = append(ch.Series, chartSeries{Kind: k, Points: strings.TrimSpace(sb.String()), Total: total, LegendY: chartT + 12 + i*16})
	}
	for _, v := range []int64{0, top / 2, top} {
		ch.YTicks = append(ch.YTicks, chartTick{X: chartL - 6, Y: y(v) + 4, Label: strconv.FormatInt(v, 10), Anchor: "end"})
	}
	for m := 0; m < chartMinutes; m += 15 {
		ch.XTicks = append(ch.XTicks, chartTick{X: x(m), Y: chartH - 6, Label: start.Add(time.Duration(m) * time.Minute).Format("15:04"), Anchor: "middle"})
	}
	ch.XTicks = append(ch.XTicks, chartTick{X: x(chartMinutes - 1), Y: chartH - 6, Label: now.Format("15:04 UTC"), Anchor: "end"})
	return ch
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v int64) int64 {
	p := int64(1)
	for {
		for _, m := range []int64{1, 2, 5} {
			if m*p >= v {
				return m * p
			}
		}
		p *= 10
	}
}
