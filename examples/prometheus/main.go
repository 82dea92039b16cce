// Command prometheus shows durable's OpenTelemetry metrics exported to
// Prometheus: two services on SQLite files, orders and billing, exchange
// messages over TCP, and billing's and orders' metrics are served at
// /metrics in Prometheus's text format.
//
//	cd examples/prometheus && go run . -addr :9464 -n 1000
//	curl -s localhost:9464/metrics | grep ^durable_
//
// It is a module of its own, so that the Prometheus exporter and client
// library it needs are not requirements of durable: the library depends on
// the OpenTelemetry API only, and the application chooses the SDK and the
// exporter. The same MeterProvider goes to durable.Config.MeterProvider (or
// to outbox.Config, outbox.RelayConfig and inbox.Config when the parts are
// used on their own).
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

func main() {
	addr := flag.String("addr", ":9464", "address of the /metrics endpoint")
	n := flag.Int("n", 1000, "messages to send; one in a hundred is dead-lettered")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("metrics at http://%s/metrics; interrupt to stop", ln.Addr())
	if err := run(ctx, ln, *n, nil); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

// run sets up the two services with metrics served on ln, sends n
// messages, and serves until ctx ends; sent, when not nil, is closed once
// every message was handled or dead-lettered.
func run(ctx context.Context, ln net.Listener, n int, sent chan<- struct{}) error {
	// The application's metrics pipeline: an OpenTelemetry MeterProvider
	// whose reader is the Prometheus exporter, registered with a registry
	// that promhttp serves.
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	srv := &http.Server{Handler: promhttp.HandlerFor(registry, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()

	dir, err := os.MkdirTemp("", "durable-prometheus")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ordersDB, ordersD, err := open(filepath.Join(dir, "orders.db"))
	if err != nil {
		return err
	}
	defer ordersDB.Close()
	billingDB, billingD, err := open(filepath.Join(dir, "billing.db"))
	if err != nil {
		return err
	}
	defer billingDB.Close()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	secret := []byte("example secret")
	mux := inbox.NewMux[*sql.Tx]()
	mux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		if string(m.Payload) == "poison" {
			return inbox.Permanent(errors.New("cannot bill this order"))
		}
		return nil
	})
	billing, err := durable.NewNode(billingD, &durable.Config[*sql.Tx]{
		Name: "billing", Listener: peer, Secret: secret, Logger: quiet,
		MeterProvider: mp, Handler: mux,
	})
	if err != nil {
		return err
	}
	orders, err := durable.NewNode(ordersD, &durable.Config[*sql.Tx]{
		Name: "orders", Secret: secret, Logger: quiet,
		Peers:         map[string]durable.Peer{"billing": {Addr: peer.Addr().String()}},
		MeterProvider: mp,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	go func() { errs <- billing.Run(ctx) }()
	go func() { errs <- orders.Run(ctx) }()

	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for i := range n {
		payload := fmt.Sprint(i)
		if i%100 == 99 {
			payload = "poison"
		}
		if err := orders.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte(payload)}); err != nil {
			_ = tx.Rollback()
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	for {
		s, err := billing.Inbox().Stats(ctx)
		if err != nil {
			return err
		}
		if s.Handled+s.Dead == int64(n) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if sent != nil {
		close(sent)
	}
	<-ctx.Done()
	for range 2 {
		if err := <-errs; err != nil {
			return err
		}
	}
	return ctx.Err()
}

// open opens and migrates a SQLite database at path.
func open(path string) (*sql.DB, *sqlite.Dialect, error) {
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		return nil, nil, err
	}
	fsys, err := migrations.FS(migrations.SQLite)
	if err != nil {
		return nil, nil, err
	}
	ups, err := fs.Glob(fsys, "*.up.sql")
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(ups)
	for _, name := range ups {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, nil, err
		}
		if _, err := db.Exec(string(b)); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return db, d, nil
}
