//go:build tools

// Package tools pins the Traefik command the test bed builds (see ../../build.sh).
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
