// Package acceptance holds the console's acceptance tests: they drive the
// console in a real headless Chromium (internal/browser) over a running
// durable Node, on SQLite and on Postgres, and check in SQL what each action
// did. It has no code of its own besides the tests.
//
// Run them with
//
//	go test ./console/acceptance/
//
// Without Chromium (Debian's chromium package, or DURABLE_CHROMIUM) they are
// skipped, and without Postgres the Postgres half is skipped, unless CI is
// set: then both are failures. With DURABLE_SCREENSHOTS=1 they also write
// docs/console-overview.png and docs/console-dead-letter.png (make
// screenshots).
package acceptance
