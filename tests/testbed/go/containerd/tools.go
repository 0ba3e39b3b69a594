//go:build tools

// Package tools pins the test bed node's container runtime (see ../../build.sh): containerd 2.x,
// its runc shim and ctr. Kubernetes 1.36+ kubelets need containerd 2; Debian ships 1.6.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
