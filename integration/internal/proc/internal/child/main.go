// Command child is the helper program proc's tests run as a subprocess: it
// serves an echo listener, prints its READY line, and exits on SIGTERM, or
// misbehaves on request (exits early, never gets ready, ignores SIGTERM).
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	exitCode := flag.Int("exit", -1, "exit with this status before getting ready")
	noReady := flag.Bool("no-ready", false, "never print the READY line")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM")
	stderrMsg := flag.String("stderr", "", "print this on stderr first")
	partial := flag.String("partial", "", "print this on stdout without a newline, then exit 0")
	flag.Parse()

	if *stderrMsg != "" {
		fmt.Fprintln(os.Stderr, *stderrMsg)
	}
	if *partial != "" {
		fmt.Print(*partial)
		return
	}
	if *exitCode >= 0 {
		os.Exit(*exitCode)
	}

	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	if !*noReady {
		fmt.Printf("starting\n")
		fmt.Printf("READY addr=%s pid=%d value=%q\n", ln.Addr(), os.Getpid(), os.Getenv("CHILD_VALUE"))
	}
	for range terms {
		if *ignoreTerm {
			fmt.Println("ignoring SIGTERM")
			continue
		}
		fmt.Println("STOPPING")
		ln.Close()
		time.Sleep(10 * time.Millisecond)
		os.Exit(0)
	}
}
