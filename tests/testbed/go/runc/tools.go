//go:build tools

// Package tools pins runc for Docker Engine 29 (see ../../build.sh): Docker 29 gives every
// container a time namespace, which Debian's runc 1.1 cannot create.
package tools

import (
	_ "github.com/opencontainers/runc"
)
