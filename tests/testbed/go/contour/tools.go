//go:build tools

// Package tools pins the Contour command the test bed builds (see ../../build.sh).
package tools

import _ "github.com/projectcontour/contour/cmd/contour"
