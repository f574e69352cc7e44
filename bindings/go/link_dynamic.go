//go:build tollgate_dynamic && !tollgate_custom_lib

package tollgate

// With -tags tollgate_dynamic: the shared library of an installed tollgate prefix, through
// pkg-config (tollgate.pc: -ltollgate, which finds libtollgate.so). The program needs
// libtollgate.so.0.1 where it runs (a system library directory, LD_LIBRARY_PATH or an rpath).

// #cgo pkg-config: tollgate
import "C"
