//go:build !tollgate_custom_lib

package tollgate

// The default link: the static library the repository's own build produces
// (cargo build --release --lib, into <repo>/target/release). To link a library elsewhere (another
// CARGO_TARGET_DIR, an installed copy), build with -tags tollgate_custom_lib and put its path in
// CGO_LDFLAGS; see README.md.

// #cgo LDFLAGS: ${SRCDIR}/../../target/release/libtollgate.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
import "C"
