//go:build tools

// Package tools pins the Docker Compose v2 command the test bed builds (see ../../build.sh).
package tools

import _ "github.com/docker/compose/v2/cmd"
