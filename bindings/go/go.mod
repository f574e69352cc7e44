module tollgate.dev/go/tollgate

go 1.23
