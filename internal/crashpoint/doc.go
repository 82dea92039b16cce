// Package crashpoint lets the fault suite kill a process at an exact point
// of the library's code, between two steps whose order matters for
// delivery: after the relay heard the peer's acknowledgement and before it
// deleted the rows, after the inbox committed a batch and before the ACK
// went out, and so on.
//
// The library calls [Hit] with the name of the point. In a normal build Hit
// is an empty function that the compiler removes: users pay nothing. Built
// with the tag durable_crashpoints (the fault suite builds its helper
// service so), Hit reads the environment variable DURABLE_CRASHPOINT once,
// at start. Its value is name:N, or name for name:1: at the N-th call of
// Hit with that name the process writes the line
//
//	CRASHPOINT <name>
//
// to its standard error and kills itself with SIGKILL: no deferred
// function, no graceful shutdown, as if the machine had lost power there.
// Calls with other names do nothing. Without the variable (or with it
// empty), Hit does nothing in that build either. A value that does not
// parse makes the process panic at start, so that a mistyped point is not
// silently never reached.
//
// The tagged build runs on Unix only.
package crashpoint

// EnvVar is the environment variable that arms a crash point in a build
// with the tag durable_crashpoints: name:N, or name for name:1.
const EnvVar = "DURABLE_CRASHPOINT"
