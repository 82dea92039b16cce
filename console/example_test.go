package console_test

import (
	"database/sql"
	"log"
	"net/http"
	"os"

	"github.com/durable-go/durable/console"
	"github.com/durable-go/durable/dialects/sqlite"
)

// Mount the console under /durable/ in the application's own mux, with
// basic-auth users from the environment (DURABLE_CONSOLE_USERS, such as
// "alice:s3cret:admin,bob:hunter2:readonly").
func Example() {
	db, err := sql.Open("sqlite", sqlite.DSN("app.db"))
	if err != nil {
		log.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	cfg := &console.Config{Prefix: "/durable"}
	if err := console.CredentialsFromEnv(cfg, os.Getenv); err != nil {
		log.Fatal(err)
	}
	h, err := console.New(d, cfg) // console.ErrNoCredentials without users or tokens
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/durable/", h)
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", mux))
}

// Behind the application's own authentication, an Authorizer names the
// user and the role; the console still checks CSRF tokens and roles.
func Example_authorizer() {
	var d console.Store // a dialect: postgres.New, postgres.NewSQL or sqlite.New
	h, err := console.New(d, &console.Config{
		Prefix: "/ops/durable",
		Authorizer: func(r *http.Request) (string, console.Role, error) {
			user := r.Header.Get("X-Authenticated-User") // set by the application's auth proxy
			if user == "" {
				return "", "", http.ErrNoCookie
			}
			if user == "oncall" {
				return user, console.RoleAdmin, nil
			}
			return user, console.RoleReadOnly, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	http.Handle("/ops/durable/", h)
}
