package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/console"
)

func (a *app) consoleCommand() *cobra.Command {
	var listen, prefix string
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve the web console: backlogs, dead letters, replays, pauses and the audit",
		Long: `Serve durable's web console (package console) until interrupted: the outbox backlog per
destination, the inbox by state and topic, the dead letters of both sides with filters,
replay and purge (one, a selection, or everything matching, after a confirmation that shows
the count), pause and resume of destinations and inbox queues, the throughput of the last
hour, and the audit table of every action.

Every request must be authenticated. The credentials come from the environment, never from
the command line:
  ` + console.EnvToken + `           an admin bearer token
  ` + console.EnvReadOnlyToken + `  a read-only bearer token
  ` + console.EnvUsers + `           basic-auth users: "alice:pw:admin,bob:pw:readonly"
Without any of them the command refuses to start. A browser signs in with a basic-auth user.

It listens on 127.0.0.1:7480 unless told otherwise (--listen); put it behind TLS before
exposing it beyond the machine.`,
		Example: `  export DURABLE_CONSOLE_USERS='alice:s3cret:admin,bob:hunter2:readonly'
  durable console --dsn "$DURABLE_DSN"
  durable console --dsn ./app.db --listen 127.0.0.1:8080 --prefix /durable`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.console(cmd.Context(), listen, prefix)
		}),
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7480", "address to listen on (host:port)")
	cmd.Flags().StringVar(&prefix, "prefix", "", "path prefix to serve the console under, such as /durable")
	return cmd
}

func (a *app) console(ctx context.Context, listen, prefix string) error {
	cfg := console.Config{Prefix: strings.TrimSuffix(prefix, "/")}
	if err := console.CredentialsFromEnv(&cfg, os.Getenv); err != nil {
		return usageErrorf("%v", err)
	}
	if len(cfg.Tokens) == 0 && len(cfg.Users) == 0 {
		return usageErrorf("no credentials: set %s, %s or %s", console.EnvToken, console.EnvReadOnlyToken, console.EnvUsers)
	}
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	h, err := console.New(db.admin, &cfg)
	if err != nil {
		return usageErrorf("%v", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	fmt.Fprintf(a.stdout, "durable console on http://%s%s/ (%s); interrupt to stop\n", ln.Addr(), cfg.Prefix, db.target)
	return console.Serve(ctx, ln, h)
}
