//go:build tools

// Package tools pins the Docker Engine the test bed runs by default (see ../../build.sh): the
// daemon and its port proxy from the moby module (v2.0.0-beta.24 = Docker 29.8.0, API 1.56).
package tools

import (
	_ "github.com/moby/moby/v2/cmd/docker-proxy"
	_ "github.com/moby/moby/v2/cmd/dockerd"
)
