//go:build !tollgate_custom_lib && !tollgate_dynamic

package tollgate

// The default link: the static library of an installed tollgate prefix, through pkg-config
// (tollgate-static.pc: the header directory, lib/libtollgate.a and the system libraries it
// needs). Point pkg-config at the prefix when it is not a system one:
//
//	PKG_CONFIG_PATH=/opt/tollgate/lib/pkgconfig go build ./...
//
// The program then carries tollgate inside it: nothing to install where it runs.

// #cgo pkg-config: tollgate-static
import "C"
