//go:build tollgate_testkit

package tollgate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

// REQ is a small chat request the test upstream answers (8 completion tokens).
const REQ = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}],"max_tokens":8}`

// RETRY_POLICY retries quickly (as the C test's).
const RETRY_POLICY = `[retry]
max_attempts = 3
backoff = { base = "10ms", max = "20ms", jitter = "none" }
retry_on = [408, 429, "5xx", "connect", "timeout", "cut_stream"]
`

// TWO_PROBLEMS is a policy with two problems (a zero limit and a misspelt key).
const TWO_PROBLEMS = "version = 1\n[[budget]]\nname = \"keep\"\nrequests_per_minute = 0\nconcurency = 4\n"

// shared is the test upstream of the tests that do not script it.
var shared *tollgate.TestUpstream

func TestMain(m *testing.M) {
	up, err := tollgate.StartTestUpstream("")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start the test upstream:", err)
		os.Exit(2)
	}
	shared = up
	code := m.Run()
	up.Close()
	os.Exit(code)
}

// upstream starts a test upstream of the test's own (scripts are per upstream).
func upstream(t testing.TB, options string) *tollgate.TestUpstream {
	t.Helper()
	up, err := tollgate.StartTestUpstream(options)
	if err != nil {
		t.Fatalf("StartTestUpstream: %v", err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

func script(t testing.TB, up *tollgate.TestUpstream, s string) {
	t.Helper()
	if err := up.Script(s); err != nil {
		t.Fatalf("script %s: %v", s, err)
	}
}

// engine creates an engine from policy text, closed at the end of the test.
func engine(t testing.TB, policy string) *tollgate.Engine {
	t.Helper()
	e, err := tollgate.New(policy)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// callEngine is an engine whose only upstream is up, plus extra policy text.
func callEngine(t testing.TB, up *tollgate.TestUpstream, extra string) *tollgate.Engine {
	t.Helper()
	return engine(t, fmt.Sprintf("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n%s", up.URL(), extra))
}

// asError extracts the *tollgate.Error of err or fails the test.
func asError(t testing.TB, err error, want tollgate.Status) *tollgate.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error of status %v, got nil", want)
	}
	var te *tollgate.Error
	if !errors.As(err, &te) {
		t.Fatalf("expected a *tollgate.Error of status %v, got %T: %v", want, err, err)
	}
	if te.Status != want {
		t.Fatalf("status: got %v (%v), want %v", te.Status, err, want)
	}
	if te.Message == "" {
		t.Errorf("error of status %v has no message", want)
	}
	return te
}

// waitFor polls cond every 2 ms for at most d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// admitTokens admits a call of `tokens` prompt tokens for model m.
func admitTokens(t testing.TB, e *tollgate.Engine, tenant, model string, tokens uint64) tollgate.Decision {
	t.Helper()
	d, err := e.Admit(tollgate.Call{Tenant: tenant, Model: model, PromptTokens: tokens})
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return d
}

// ok200 is the outcome of a sent call answered 200 with 10 + 5 tokens.
func ok200() tollgate.Outcome {
	return tollgate.Outcome{Sent: true, Status: 200, Latency: time.Millisecond,
		Usage: &tollgate.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}}
}

func goAndSettle(t testing.TB, e *tollgate.Engine, model string) {
	t.Helper()
	d := admitTokens(t, e, "", model, 10)
	if d.Kind != tollgate.Go || d.Permit == nil {
		t.Fatalf("admit: got %v (%v), want go", d.Kind, d.Err())
	}
	v, err := e.Settle(d.Permit, ok200())
	if err != nil || v.Kind != tollgate.Done {
		t.Fatalf("settle: %v %v", v.Kind, err)
	}
}

func expectDeny(t testing.TB, e *tollgate.Engine, model, budget, code string, limit tollgate.Limit) {
	t.Helper()
	d := admitTokens(t, e, "", model, 10)
	if d.Kind != tollgate.Deny || d.Permit != nil {
		t.Fatalf("admit: got %v, want deny by %s", d.Kind, budget)
	}
	if d.Budget != budget || d.Limit != limit {
		t.Errorf("decision budget %q limit %v, want %q %v", d.Budget, d.Limit, budget, limit)
	}
	te := asError(t, d.Err(), tollgate.StatusDenied)
	if te.Budget != budget || te.Code != code || !strings.Contains(te.Message, budget) {
		t.Errorf("denial: budget %q code %q message %q; want %q %q", te.Budget, te.Code, te.Message, budget, code)
	}
	if !errors.Is(d.Err(), tollgate.ErrDenied) {
		t.Errorf("errors.Is(denial, ErrDenied) is false")
	}
}

func writeTemp(t testing.TB, name, content string) string {
	t.Helper()
	p := t.TempDir() + "/" + name
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
