package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code. It is main
// without the process: tests call it with their own streams.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return newApp(stdin, stdout, stderr).execute(ctx, args)
}

// execute runs one command line and returns its exit code, having printed
// any error as one line on stderr.
func (a *app) execute(ctx context.Context, args []string) int {
	stderr := a.stderr
	root := a.rootCommand()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		fmt.Fprintln(stderr, errorLine(ee.msg))
		return ee.code
	}
	// Not classified by a command: cobra rejected the command line (unknown
	// command or flag, bad flag value, wrong arguments).
	msg := oneLine(err.Error())
	if cmd != nil {
		msg = fmt.Sprintf("%s (see '%s --help')", msg, cmd.CommandPath())
	}
	fmt.Fprintln(stderr, errorLine(msg))
	return exitUsage
}
