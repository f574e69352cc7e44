//go:build tollgate_custom_lib

package tollgate

// With -tags tollgate_custom_lib the library comes from CGO_LDFLAGS, e.g.
//
//	CGO_LDFLAGS=/opt/tollgate/lib/libtollgate.a go build -tags tollgate_custom_lib ./...
//
// cmd/go puts CGO_LDFLAGS before the flags below, so the archive precedes the system libraries
// it needs, as a static link requires.

// #cgo LDFLAGS: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
import "C"
