//go:build tools

// Package tools pins the Helm command the test bed builds (see ../../build.sh): the chart in
// deploy/helm is linted, rendered and installed with it.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
