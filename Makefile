# durable: the commands a developer and CI use.
GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test test/short lint fmt generate bench bench-instances db/up db/down

## test: the whole suite with the race detector (Postgres tests skip cleanly
## without a server, and fail instead when CI is set), and the crash points
## once more with the build tag that arms them.
test:
	$(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -tags durable_crashpoints ./internal/crashpoint/
	cd examples/prometheus && $(GO) test -count=1 ./...

test/short:
	$(GO) test -short -count=1 ./...

## demo: two services, orders → billing, exchange 10,000 messages through
## durable on embedded SQLite (no setup) and print what arrived, what was
## dead-lettered, and that nothing was lost or doubled. More options:
## make demo DEMO_FLAGS='--postgres postgres://... -n 50000'; see --help.
.PHONY: demo
demo:
	$(GO) run ./cmd/durable demo $(DEMO_FLAGS)

## screenshots: retake docs/console-overview.png and docs/console-dead-letter.png
## with the console's browser tests (needs Chromium; see docs/console.md).
.PHONY: screenshots
screenshots:
	DURABLE_SCREENSHOTS=1 $(GO) test -count=1 -run 'TestConsoleInBrowser/sqlite' ./console/acceptance/

## lint: gofmt, go vet and staticcheck must all be clean.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags durable_crashpoints ./internal/crashpoint/
	$(STATICCHECK) ./...
	cd examples/prometheus && $(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## generate: regenerate the goose migrations from the SQL source of truth.
generate:
	$(GO) generate ./...

## bench: the end-to-end benchmark (W1–W3 on Postgres and SQLite, the raw
## limit beside each; see docs/benchmarks.md). Pass flags with BENCHFLAGS,
## e.g. make bench BENCHFLAGS='--dialect sqlite --json'. The parts' Go
## micro-benchmarks: go test -run='^$' -bench=. -benchmem ./...
BENCHFLAGS ?=
bench:
	$(GO) run ./cmd/durable bench $(BENCHFLAGS)

## bench-instances: W1 and W2 with 1, 2 and 4 sender and receiver processes
## on Postgres (see docs/benchmarks.md, "Several instances"); BENCHFLAGS too.
bench-instances:
	$(GO) run ./cmd/durable bench --instances 1,2,4 --w2-messages 120000 $(BENCHFLAGS)

## db/up: a PostgreSQL for the tests, for people who have none (needs Docker).
db/up:
	docker compose up -d --wait postgres

db/down:
	docker compose down
