//go:build tollgate_testkit

package tollgate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

// The policies of the admit + settle benchmarks: "requests" is the Rust bench (a) of
// docs/benchmarks.md (one unscoped budget, requests only); "tenant" is benches/ffi.rs's (a
// per-tenant budget with requests, tokens and concurrency, and a per-model budget).
var pairPolicies = []struct{ name, policy, tenant, model string }{
	{"requests", "version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = 1000000000\n", "", "gpt-4o-mini"},
	{"tenant", `version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000
[[budget]]
name = "per-model"
scope = ["model"]
requests_per_second = 100000000
`, "acme", "gpt-4o"},
}

// BenchmarkAdmitSettle measures one Admit + Settle pair through the Go binding (cgo included),
// reported as ns/pair; the C sub-benchmarks run the same pair in a C loop (no cgo) as the
// baseline.
func BenchmarkAdmitSettle(b *testing.B) {
	for _, pp := range pairPolicies {
		b.Run("go/"+pp.name, func(b *testing.B) {
			e := engine(b, pp.policy)
			call := tollgate.Call{Tenant: pp.tenant, Model: pp.model, PromptTokens: 10}
			usage := &tollgate.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}
			outcome := tollgate.Outcome{Sent: true, Status: 200, Usage: usage}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d, err := e.Admit(call)
				if err != nil || d.Kind != tollgate.Go {
					b.Fatal(d.Kind, err)
				}
				v, err := e.Settle(d.Permit, outcome)
				if err != nil || v.Kind != tollgate.Done {
					b.Fatal(v.Kind, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/pair")
		})
		b.Run("c/"+pp.name, func(b *testing.B) {
			e := engine(b, pp.policy)
			b.ResetTimer()
			if err := tollgate.AdmitSettleLoopC(e, pp.tenant, pp.model, 10, b.N); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/pair")
		})
	}
	b.Run("go-parallel/requests", func(b *testing.B) {
		e := engine(b, pairPolicies[0].policy)
		outcome := tollgate.Outcome{Sent: true, Status: 200,
			Usage: &tollgate.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}}
		b.RunParallel(func(pb *testing.PB) {
			call := tollgate.Call{Model: "gpt-4o-mini", PromptTokens: 10}
			for pb.Next() {
				d, err := e.Admit(call)
				if err != nil || d.Kind != tollgate.Go {
					b.Error(d.Kind, err)
					return
				}
				if _, err := e.Settle(d.Permit, outcome); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/pair")
	})
}

// sendConcurrency is the number of goroutines sending at once in BenchmarkSend and
// BenchmarkNetHTTP (fixed, whatever GOMAXPROCS is).
const sendConcurrency = 16

// benchBody is the request both benchmarks send.
var benchBody = []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}],"max_tokens":8}`)

// benchUpstream is one test upstream for the send benchmarks of a run (the same server for
// tollgate and net/http).
var benchUpstream *tollgate.TestUpstream

func sendUpstream(b *testing.B) *tollgate.TestUpstream {
	if benchUpstream == nil {
		up, err := tollgate.StartTestUpstream("")
		if err != nil {
			b.Fatal(err)
		}
		benchUpstream = up // stopped with the process
	}
	return benchUpstream
}

func runParallelFixed(b *testing.B, f func(pb *testing.PB)) {
	p := (sendConcurrency + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	b.SetParallelism(p)
	b.RunParallel(f)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkSend: Engine.Send (the whole pipeline: admission, transport, JSON parse of the answer,
// accounting) against the test upstream from sendConcurrency goroutines.
func BenchmarkSend(b *testing.B) {
	up := sendUpstream(b)
	e := callEngine(b, up, "[[budget]]\nname = \"b\"\nrequests_per_second = 1000000000\n")
	ctx := context.Background()
	if _, err := e.Send(ctx, benchBody, nil); err != nil { // warm the connections
		b.Fatal(err)
	}
	b.ResetTimer()
	runParallelFixed(b, func(pb *testing.PB) {
		for pb.Next() {
			r, err := e.Send(ctx, benchBody, nil)
			if err != nil || r.Status != 200 {
				b.Error(err)
				return
			}
			r.Free()
		}
	})
}

// BenchmarkNetHTTP: the same request to the same upstream with Go's net/http (keep-alive
// connections, one per goroutine), reading the body ("raw") and also decoding its usage
// ("json", what a client needs at least).
func BenchmarkNetHTTP(b *testing.B) {
	for _, decode := range []bool{false, true} {
		name := "raw"
		if decode {
			name = "json"
		}
		b.Run(name, func(b *testing.B) {
			up := sendUpstream(b)
			url := up.URL() + "/chat/completions"
			client := &http.Client{Transport: &http.Transport{MaxIdleConns: 2 * sendConcurrency,
				MaxIdleConnsPerHost: 2 * sendConcurrency, IdleConnTimeout: time.Minute}}
			defer client.CloseIdleConnections()
			post := func() error {
				resp, err := client.Post(url, "application/json", bytes.NewReader(benchBody))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d: %s", resp.StatusCode, body)
				}
				if decode {
					var r struct {
						Usage struct {
							TotalTokens int `json:"total_tokens"`
						} `json:"usage"`
					}
					if err := json.Unmarshal(body, &r); err != nil || r.Usage.TotalTokens == 0 {
						return fmt.Errorf("body %s: %v", body, err)
					}
				}
				return nil
			}
			if err := post(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			runParallelFixed(b, func(pb *testing.PB) {
				for pb.Next() {
					if err := post(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
