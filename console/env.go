package console

import (
	"fmt"
	"strings"
)

// Environment variables CredentialsFromEnv reads (the durable console
// command reads them too).
const (
	// EnvToken is an admin bearer token (user "token").
	EnvToken = "DURABLE_CONSOLE_TOKEN"
	// EnvReadOnlyToken is a read-only bearer token (user "readonly-token").
	EnvReadOnlyToken = "DURABLE_CONSOLE_READONLY_TOKEN"
	// EnvUsers lists basic-auth users: "alice:pw:admin,bob:pw:readonly".
	EnvUsers = "DURABLE_CONSOLE_USERS"
)

// ParseUsers parses a list of basic-auth users, "name:password:role"
// separated by commas, as DURABLE_CONSOLE_USERS holds it. A password may
// contain ':' (the name ends at the first, the role starts after the last)
// but not ','. Role is "admin" or "readonly".
func ParseUsers(s string) ([]User, error) {
	var users []User
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, rest, ok1 := strings.Cut(item, ":")
		j := strings.LastIndex(rest, ":")
		if !ok1 || j < 0 {
			return nil, fmt.Errorf("durable/console: user %d: %q is not name:password:role", i+1, redactUser(item))
		}
		pw, role := rest[:j], Role(rest[j+1:])
		if name == "" || pw == "" {
			return nil, fmt.Errorf("durable/console: user %d (%s): empty name or password", i+1, name)
		}
		if !role.valid() {
			return nil, fmt.Errorf("durable/console: user %d (%s): role %q is neither %q nor %q", i+1, name, role, RoleAdmin, RoleReadOnly)
		}
		for _, u := range users {
			if u.Name == name {
				return nil, fmt.Errorf("durable/console: user %s listed twice", name)
			}
		}
		users = append(users, User{Name: name, Password: pw, Role: role})
	}
	return users, nil
}

// redactUser keeps the name of a malformed user entry, not its password.
func redactUser(item string) string {
	name, _, _ := strings.Cut(item, ":")
	return name + ":…"
}

// CredentialsFromEnv adds to cfg the credentials of the environment, read
// with getenv (os.Getenv): EnvToken, EnvReadOnlyToken and EnvUsers.
func CredentialsFromEnv(cfg *Config, getenv func(string) string) error {
	if t := getenv(EnvToken); t != "" {
		cfg.Tokens = append(cfg.Tokens, Token{Name: "token", Secret: t, Role: RoleAdmin})
	}
	if t := getenv(EnvReadOnlyToken); t != "" {
		cfg.Tokens = append(cfg.Tokens, Token{Name: "readonly-token", Secret: t, Role: RoleReadOnly})
	}
	if s := getenv(EnvUsers); s != "" {
		users, err := ParseUsers(s)
		if err != nil {
			return fmt.Errorf("%s: %w", EnvUsers, err)
		}
		cfg.Users = append(cfg.Users, users...)
	}
	return nil
}
