// A small multi-tenant client on the Go binding of tollgate: tollgate makes some calls itself
// (Send, Stream), and guards others made with Go's own net/http client (Admit / Settle).
//
//	go run . -base-url http://127.0.0.1:8080/v1        # an OpenAI-compatible upstream
//	go run -tags 'tollgate_testkit' . -demo            # its own test upstream (testkit library)
//
// See bindings/go/README.md for the build (the static library, CGO_LDFLAGS and build tags).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"tollgate.dev/go/tollgate"
)

// startDemoUpstream starts the library's test upstream (testkit.go, with -tags
// tollgate_testkit); nil without the tag.
var startDemoUpstream func() (url string, stop func(), err error)

const policy = `version = 1

[[upstream]]
name = "main"
base_url = "%s"

[retry]
max_attempts = 3
backoff = { base = "20ms", max = "200ms" }

# Each tenant may make 3 requests a minute; more are refused at once.
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 3
when_exhausted = "deny"

# At most 8 calls in flight overall.
[[budget]]
name = "in-flight"
concurrency = 8
`

func main() {
	baseURL := flag.String("base-url", "", "the upstream's base URL (http://host:port/v1)")
	demo := flag.Bool("demo", false, "use the library's test upstream (needs -tags tollgate_testkit)")
	flag.Parse()
	log.SetFlags(0)

	if *demo {
		if startDemoUpstream == nil {
			log.Fatal("-demo needs the test upstream: build with -tags tollgate_testkit")
		}
		url, stop, err := startDemoUpstream()
		if err != nil {
			log.Fatal(err)
		}
		defer stop()
		*baseURL = url
	}
	if *baseURL == "" {
		flag.Usage()
		os.Exit(2)
	}

	fmt.Printf("tollgate %s (header %s)\n", tollgate.Version(), tollgate.HeaderVersion())
	eng, err := tollgate.New(fmt.Sprintf(policy, *baseURL))
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := tollgate.ChatRequest{Model: "gpt-4o-mini", MaxTokens: 16,
		Messages: []tollgate.Message{{Role: "user", Content: "Say hello."}}}

	// 1. tollgate makes the call: tenant "acme" has 3 requests a minute.
	for i := 1; i <= 4; i++ {
		resp, err := eng.SendJSON(ctx, req, &tollgate.Options{Tenant: "acme"})
		var te *tollgate.Error
		switch {
		case err == nil:
			fmt.Printf("send %d: HTTP %d, %d tokens, %d attempt(s)\n", i, resp.Status, resp.Usage.TotalTokens, resp.Attempts)
		case errors.As(err, &te) && te.Status == tollgate.StatusDenied:
			fmt.Printf("send %d: denied by budget %q (%s), retry in %v\n", i, te.Budget, te.Code, te.RetryAfter.Round(time.Second))
		default:
			log.Fatalf("send %d: %v", i, err)
		}
	}

	// 2. A streamed answer for another tenant.
	fmt.Print("stream: ")
	for ev, err := range eng.StreamJSON(ctx, req, &tollgate.Options{Tenant: "globex"}) {
		if err != nil {
			log.Fatalf("stream: %v", err)
		}
		if ev.Done {
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal(ev.Data, &chunk) == nil && len(chunk.Choices) > 0 {
			fmt.Print(chunk.Choices[0].Delta.Content)
		}
	}
	fmt.Println()

	// 3. The host makes the call with net/http; tollgate decides and accounts.
	body, _ := json.Marshal(req)
	for i := 1; i <= 2; i++ {
		if err := hostCall(ctx, eng, *baseURL, "initech", body); err != nil {
			log.Fatalf("host call: %v", err)
		}
	}

	// 4. A reload: the new limit applies from the next decision; a bad policy is refused.
	gen, err := eng.Reload(strings.Replace(fmt.Sprintf(policy, *baseURL), "requests_per_minute = 3", "requests_per_minute = 10", 1))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("reloaded: generation %d\n", gen)
	if _, err := eng.Reload("version = 1\n[[budget]]\nname = \"x\"\nrequests_per_minute = 0\n"); err != nil {
		var te *tollgate.Error
		errors.As(err, &te)
		fmt.Printf("refused reload (%d problem(s)): %s\n", len(te.Problems), te.Problems[0])
	}

	metrics, err := eng.Metrics()
	if err != nil {
		log.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "tollgate_") {
			n++
		}
	}
	fmt.Printf("metrics: %d samples\n", n)
}

// hostCall admits a call, makes it with net/http, and settles it (retrying as told).
func hostCall(ctx context.Context, eng *tollgate.Engine, baseURL, tenant string, body []byte) error {
	call := tollgate.Call{Tenant: tenant, Model: "gpt-4o-mini", PromptKind: tollgate.PromptRequest, Prompt: string(body)}
	for {
		d, err := eng.Admit(call)
		if err != nil {
			return err
		}
		switch d.Kind {
		case tollgate.Deny:
			return d.Err()
		case tollgate.Wait:
			time.Sleep(d.Wait)
			continue
		}
		start := time.Now()
		out := tollgate.Outcome{Sent: true}
		hreq, _ := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/chat/completions", bytes.NewReader(body))
		hreq.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(hreq)
		if err != nil {
			out.Failure = tollgate.FailureConnectOther
		} else {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			out.Status, out.Header = resp.StatusCode, resp.Header
			var parsed struct {
				Usage struct {
					PromptTokens     uint64 `json:"prompt_tokens"`
					CompletionTokens uint64 `json:"completion_tokens"`
					TotalTokens      uint64 `json:"total_tokens"`
				} `json:"usage"`
			}
			if json.Unmarshal(data, &parsed) == nil && parsed.Usage.TotalTokens > 0 {
				out.Usage = &tollgate.Usage{PromptTokens: parsed.Usage.PromptTokens,
					CompletionTokens: parsed.Usage.CompletionTokens, TotalTokens: parsed.Usage.TotalTokens}
			}
		}
		out.Latency = time.Since(start)
		v, err := eng.Settle(d.Permit, out)
		if call.Attempt != nil {
			call.Attempt.Free()
			call.Attempt = nil
		}
		if err != nil {
			return err
		}
		switch v.Kind {
		case tollgate.Done:
			fmt.Printf("host call: HTTP %d, charged %d tokens\n", out.Status, v.Settlement.Tokens)
			return nil
		case tollgate.GiveUp:
			return v.Err()
		}
		time.Sleep(v.RetryAfter)
		call.Attempt = v.Attempt
	}
}
