// Command caddy is Caddy with the standard modules and imagelb compiled in:
// the same binary "xcaddy build --with github.com/imagelb/caddy-imagelb"
// produces, buildable with plain "go build" or "go run".
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/imagelb/caddy-imagelb"
)

func main() {
	caddycmd.Main()
}
