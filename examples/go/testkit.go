//go:build tollgate_testkit

package main

import "tollgate.dev/go/tollgate"

func init() {
	startDemoUpstream = func() (string, func(), error) {
		up, err := tollgate.StartTestUpstream(`{"words": 8}`)
		if err != nil {
			return "", nil, err
		}
		return up.URL(), func() { up.Close() }, nil
	}
}
