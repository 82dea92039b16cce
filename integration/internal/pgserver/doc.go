// Package pgserver starts a private PostgreSQL server for one test, so the
// fault suite can crash and restart the database under a running pipeline.
//
//	srv := pgserver.Start(t, nil)     // initdb + postgres on 127.0.0.1:<free port>
//	url, err := srv.CreateDatabase(ctx, "billing")
//	...
//	srv.Kill()                        // SIGKILL: postmaster and every backend
//	srv.Start()                       // crash recovery, same port, same data
//	srv.Restart(pgserver.Immediate)   // or Fast, or Smart
//
// The server lives in a fresh temporary directory, listens on 127.0.0.1 only
// (no Unix socket), trusts every local connection (user postgres), keeps
// fsync and synchronous_commit on (the suite tests crash durability), and is
// stopped and removed when the test ends. Its log goes to the test log,
// prefixed "pg:<port>".
//
// # Binaries
//
// initdb and postgres are found in Options.BinDir, else $DURABLE_PG_BINDIR,
// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin or
// /usr/pgsql-*/bin, else $PATH. When none is found the test is skipped with
// a message saying so, unless the CI environment variable is set: then it
// fails, because CI must run the fault suite.
//
// # Running as root
//
// initdb and postgres refuse to run as root. When the test runs as root (as
// it does in containers and CI), pgserver runs them as the "postgres" OS
// user: the child processes get that user's uid and gid through
// SysProcAttr.Credential, the data directory is created under a temporary
// directory that user can reach (every ancestor searchable by it, checked;
// t.TempDir is not used because its parents are private to root) and chowned
// to it. Without such a user the test is skipped (failed under CI).
//
// # Why not pg_ctl
//
// The postmaster is run directly as a child of the test rather than through
// pg_ctl, which daemonizes it: as a child its log can be captured, its exit
// observed, and it is killed (Pdeathsig, on Linux) if the test binary dies.
// The stop modes are the signals pg_ctl sends: Smart is SIGTERM, Fast is
// SIGINT, Immediate is SIGQUIT. The postmaster runs in its own process group,
// so Kill delivers SIGKILL to it and to every backend at once, like a crash
// of the machine's database process tree, and then waits until all of them
// are gone so that the next start does not find the old shared memory in use.
//
// The package builds on Unix only (doc.go aside); the fault suite is Unix
// only as well.
package pgserver
