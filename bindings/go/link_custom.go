//go:build tollgate_custom_lib

package tollgate

// With -tags tollgate_custom_lib the header directory and the library come from CGO_CFLAGS and
// CGO_LDFLAGS, for a library that is not in an installed prefix (the repository's own tests
// use it with target/release/libtollgate.a), e.g.
//
//	CGO_CFLAGS=-I/src/tollgate/crates/tollgate-capi/include \
//	CGO_LDFLAGS=/src/tollgate/target/release/libtollgate.a go build -tags tollgate_custom_lib ./...
//
// cmd/go puts CGO_LDFLAGS before the flags below, so the archive precedes the system libraries
// it needs, as a static link requires. Inside a checkout of the repository the header is found
// without CGO_CFLAGS (a -I given there comes first and wins).

// #cgo CFLAGS: -I${SRCDIR}/../../crates/tollgate-capi/include
// #cgo LDFLAGS: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
import "C"
