// Command durable is the operator's tool for durable: it migrates the schema,
// inspects and repairs what is in the outbox, inbox and dead-letter tables,
// and runs the demo and the benchmark.
//
//	durable migrate up     --dsn postgres://user@host:5432/app
//	durable migrate status --dsn ./app.db --json
//	durable migrate down   --dsn ./app.db --all --yes
//	durable migrate sql    --dialect postgres > durable.sql
//	durable migrate check  --dsn "$DURABLE_DSN"
//	durable deadletters list   --dsn ./app.db --since 1h
//	durable deadletters show   order-1-placed --source shop
//	durable deadletters replay --reason no_handler --yes
//	durable deadletters purge  --before 30d --include-replayed --yes
//	durable deadletters list   --side outbox --destination billing
//	durable deadletters replay --side outbox --destination billing --yes
//	durable stats              --dsn "$DURABLE_DSN" --json
//	durable console            --dsn "$DURABLE_DSN" --listen 127.0.0.1:7480
//
// Global flags: --dialect postgres|sqlite (inferred from the DSN when
// omitted), --dsn (or the DURABLE_DSN environment variable), --schema
// (Postgres), --json, --timeout.
//
// Errors are one line on stderr, prefixed "durable: ". Exit codes:
//
//	0  success
//	1  failure (a migration failed, the user declined a confirmation, a timeout)
//	2  usage error (unknown command or flag, bad flag value, --yes missing without a terminal,
//	   replay or purge without a filter or --all)
//	3  the database cannot be used: invalid DSN, DSN and --dialect disagree,
//	   unreachable, authentication refused, SQLite file missing or not a database
//	4  the durable schema is missing or at the wrong version (run durable migrate up)
//
// The commands wrap library packages a program can use as well:
// dialects/dsn (a DSN to an open database and its dialect), migrations
// (Check, Up, Adopt; goose for up, down and status), deadletter (list,
// replay and purge both sides' dead letters), console (the web console)
// and the dialects' stats.
//
// docs/cli.md describes every command.
package main
