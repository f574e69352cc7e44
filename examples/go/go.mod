module tollgate.dev/go/tollgate/examples

go 1.23

require tollgate.dev/go/tollgate v0.0.0

replace tollgate.dev/go/tollgate => ../../bindings/go
