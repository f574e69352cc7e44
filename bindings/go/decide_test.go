//go:build tollgate_testkit

package tollgate_test

import (
	"errors"
	"math"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

func TestAdmitSettle(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"rpm3\"\nrequests_per_minute = 3\nwhen_exhausted = \"deny\"\n")
	for i := 0; i < 3; i++ {
		d := admitTokens(t, e, "", "m", 10)
		if d.Kind != tollgate.Go || d.Permit == nil || d.Denial != nil || d.Budget != "" {
			t.Fatalf("call %d: %+v", i, d)
		}
		if n := d.Permit.PromptTokens(); n != 10 {
			t.Errorf("prompt tokens %d", n)
		}
		v, err := e.Settle(d.Permit, ok200())
		if err != nil || v.Kind != tollgate.Done || v.Attempt != nil || v.GiveUp != nil {
			t.Fatalf("settle: %+v %v", v, err)
		}
		s := v.Settlement
		if !s.HasUsage || s.Tokens != 15 || s.Usage.TotalTokens != 15 || s.ReservedTokens < 10 {
			t.Errorf("settlement %+v", s)
		}
		if d.Permit.PromptTokens() != 0 {
			t.Error("a settled permit still answers")
		}
	}
	d := admitTokens(t, e, "", "m", 10)
	if d.Kind != tollgate.Deny || d.Wait <= 0 || d.Wait > time.Minute {
		t.Fatalf("4th call: %+v", d)
	}
	te := asError(t, d.Err(), tollgate.StatusDenied)
	if !te.HasRetryAfter || te.RetryAfter != d.Wait || te.Budget != "rpm3" || te.Code != "budget_exhausted" {
		t.Errorf("denial %+v (decision wait %v)", te, d.Wait)
	}

	// Free refunds: the slot of a freed permit is there again.
	one := engine(t, "version = 1\n[[budget]]\nname = \"one\"\nrequests_per_minute = 1\n")
	d = admitTokens(t, one, "", "m", 10)
	d.Permit.Free()
	d.Permit.Free() // twice: nothing
	goAndSettle(t, one, "m")
	expectDeny(t, one, "m", "one", "budget_exhausted", tollgate.LimitRequestsPerMinute)

	// A zero Outcome is "not sent": refunded, nothing charged.
	one2 := engine(t, "version = 1\n[[budget]]\nname = \"one\"\nrequests_per_minute = 1\n")
	d = admitTokens(t, one2, "", "m", 10)
	v, err := one2.Settle(d.Permit, tollgate.Outcome{})
	if err != nil || v.Kind != tollgate.Done || v.Settlement.Tokens != 0 || v.Settlement.HasUsage {
		t.Fatalf("not sent: %+v %v", v, err)
	}
	goAndSettle(t, one2, "m")
	// Settling twice is an error, not a crash.
	e2 := engine(t, "version = 1\n")
	d = admitTokens(t, e2, "", "m", 1)
	if _, err := e2.Settle(d.Permit, ok200()); err != nil {
		t.Fatal(err)
	}
	_, err = e2.Settle(d.Permit, ok200())
	asError(t, err, tollgate.StatusInvalidArgument)
}

func TestWaitAndAcquire(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"patient\"\nrequests_per_second = 1\nwhen_exhausted = { wait_up_to = \"2s\" }\n")
	goAndSettle(t, e, "m")
	d := admitTokens(t, e, "", "m", 10)
	if d.Kind != tollgate.Wait || d.Permit != nil || d.Denial != nil || d.Budget != "patient" ||
		d.Limit != tollgate.LimitRequestsPerSecond || d.Wait <= 0 || d.Wait > time.Second {
		t.Fatalf("wait decision: %+v", d)
	}
	t0 := time.Now()
	p, err := e.Acquire(tollgate.Call{Model: "m", PromptTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 2500*time.Millisecond {
		t.Errorf("acquire waited %v", took)
	}
	if _, err := e.Settle(p, ok200()); err != nil {
		t.Fatal(err)
	}

	slow := engine(t, "version = 1\n[[budget]]\nname = \"slow\"\nrequests_per_minute = 1\nwhen_exhausted = { wait_up_to = \"50ms\" }\n")
	goAndSettle(t, slow, "m")
	_, err = slow.Acquire(tollgate.Call{Model: "m", PromptTokens: 10})
	if te := asError(t, err, tollgate.StatusDenied); te.Budget != "slow" {
		t.Errorf("budget %q", te.Budget)
	}
}

func TestPromptKinds(t *testing.T) {
	e := engine(t, "version = 1\n")
	d, err := e.Admit(tollgate.Call{Model: "gpt-4o", PromptTokens: 123, MaxTokens: 7})
	if err != nil || d.Kind != tollgate.Go {
		t.Fatal(d, err)
	}
	if d.Permit.PromptTokens() != 123 || d.Permit.ReservedTokens() != 130 {
		t.Errorf("tokens %d / %d", d.Permit.PromptTokens(), d.Permit.ReservedTokens())
	}
	if c := d.Permit.EstimatedCost(); math.Abs(c-0.0003775) > 1e-9 {
		t.Errorf("estimated cost %g, want 0.0003775", c)
	}
	if _, routed := d.Permit.Target(); routed {
		t.Error("not routed, but a target")
	}
	d.Permit.Free()

	d, _ = e.Admit(tollgate.Call{Model: "gpt-4o", PromptKind: tollgate.PromptText, Prompt: "hello world", MaxTokens: 100})
	if d.Permit.PromptTokens() != 2 || d.Permit.ReservedTokens() != 102 {
		t.Errorf("text: %d / %d", d.Permit.PromptTokens(), d.Permit.ReservedTokens())
	}
	d.Permit.Free()
	d, _ = e.Admit(tollgate.Call{Model: "gpt-4o", PromptKind: tollgate.PromptRequest,
		Prompt: `{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}],"max_tokens":50}`})
	if pt := d.Permit.PromptTokens(); pt <= 2 || pt >= 50 || d.Permit.ReservedTokens() != pt+50 {
		t.Errorf("request: %d / %d", pt, d.Permit.ReservedTokens())
	}
	d.Permit.Free()

	// Bad input is an error and admits nothing.
	_, err = e.Admit(tollgate.Call{Model: "m", PromptKind: 3})
	asError(t, err, tollgate.StatusInvalidArgument)
	_, err = e.Admit(tollgate.Call{Model: "m", PromptKind: tollgate.PromptRequest, Prompt: `{"model":`})
	asError(t, err, tollgate.StatusInvalidJSON)
	_, err = e.Admit(tollgate.Call{Model: "m", PromptKind: tollgate.PromptText, Prompt: "\xff"})
	asError(t, err, tollgate.StatusInvalidUTF8)
	_, err = e.Admit(tollgate.Call{Model: "m", Tenant: "\xc3\x28"})
	asError(t, err, tollgate.StatusInvalidUTF8)
	// The zero Call is valid.
	d, err = e.Admit(tollgate.Call{})
	if err != nil || d.Kind != tollgate.Go {
		t.Fatal(d, err)
	}
	d.Permit.Free()
}

func TestSettleRetryAndGiveUp(t *testing.T) {
	e := engine(t, "version = 1\n[retry]\nmax_attempts = 2\nbackoff = { base = \"10ms\", max = \"20ms\", jitter = \"none\" }\nbudget = { ratio = 0.1, max_tokens = 100 }\n")
	d := admitTokens(t, e, "", "m", 10)
	v, err := e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 503})
	if err != nil || v.Kind != tollgate.Retry || v.Attempt == nil || v.RetryAfter <= 0 || v.RetryAfter > 20*time.Millisecond {
		t.Fatalf("503: %+v %v", v, err)
	}
	if n := v.Attempt.Number(); n != 2 {
		t.Errorf("attempt number %d", n)
	}
	attempt := v.Attempt
	d, err = e.Admit(tollgate.Call{Model: "m", PromptTokens: 10, Attempt: attempt})
	if err != nil || d.Kind != tollgate.Go {
		t.Fatal(d, err)
	}
	v, err = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 503})
	if err != nil || v.Kind != tollgate.GiveUp {
		t.Fatalf("second 503: %+v %v", v, err)
	}
	te := asError(t, v.Err(), tollgate.StatusGaveUp)
	if te.Code != "attempts_exhausted" || te.HTTPStatus != 503 || !errors.Is(v.Err(), tollgate.ErrGaveUp) {
		t.Errorf("give up: %+v", te)
	}
	attempt.Free()
	attempt.Free()

	d = admitTokens(t, e, "", "m", 10)
	v, _ = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 400})
	if te := asError(t, v.Err(), tollgate.StatusGaveUp); te.Code != "not_retryable" || te.HTTPStatus != 400 {
		t.Errorf("400: %+v", te)
	}

	// A transport failure retries; headers set the delay.
	d = admitTokens(t, e, "", "m", 10)
	v, _ = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Failure: tollgate.FailureConnectRefused})
	if v.Kind != tollgate.Retry {
		t.Errorf("connect refused: %v", v.Kind)
	}
	v.Attempt.Free()
	d = admitTokens(t, e, "", "m", 10)
	v, _ = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 429,
		Header: http.Header{"Content-Type": {"application/json"}, "Retry-After": {"7"}, "X-Empty": {""}}})
	if v.Kind != tollgate.Retry || v.RetryAfter != 7*time.Second {
		t.Errorf("Retry-After 7: %v %v", v.Kind, v.RetryAfter)
	}
	v.Attempt.Free()
	d = admitTokens(t, e, "", "m", 10)
	v, _ = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 429, Header: http.Header{"retry-after-ms": {"1500"}}})
	if v.Kind != tollgate.Retry || v.RetryAfter != 1500*time.Millisecond {
		t.Errorf("retry-after-ms: %v %v", v.Kind, v.RetryAfter)
	}
	v.Attempt.Free()
	// A stream whose content was delivered is never retried.
	d = admitTokens(t, e, "", "m", 10)
	v, _ = e.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 200, Failure: tollgate.FailureCutStream, ContentDelivered: true})
	if v.Kind != tollgate.GiveUp {
		t.Errorf("cut stream: %v", v.Kind)
	}

	// Settle errors consume the permit (concurrency 1: the slot is free again).
	c := engine(t, "version = 1\n[[budget]]\nname = \"conc\"\nconcurrency = 1\n")
	d = admitTokens(t, c, "", "m", 1)
	_, err = c.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 200, Header: http.Header{"\xc3\x28": {"v"}}})
	asError(t, err, tollgate.StatusInvalidUTF8)
	d = admitTokens(t, c, "", "m", 1)
	_, err = c.Settle(d.Permit, tollgate.Outcome{Sent: true, Failure: 12})
	asError(t, err, tollgate.StatusInvalidArgument)
	goAndSettle(t, c, "m")
}

// A per-tenant budget of N requests a minute with when_exhausted = "deny" admits exactly N of
// 100 goroutines; the others are denied by that budget.
func TestBudgetAcrossGoroutines(t *testing.T) {
	const n = 37
	e := engine(t, "version = 1\n[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 37\nwhen_exhausted = \"deny\"\n")
	var admitted, denied atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := e.Admit(tollgate.Call{Tenant: "acme", Model: "gpt-4o-mini", PromptTokens: 10})
			if err != nil {
				t.Error(err)
				return
			}
			switch d.Kind {
			case tollgate.Go:
				admitted.Add(1)
				if _, err := e.Settle(d.Permit, ok200()); err != nil {
					t.Error(err)
				}
			case tollgate.Deny:
				denied.Add(1)
				var te *tollgate.Error
				if !errors.As(d.Err(), &te) || te.Budget != "per-tenant" || te.Status != tollgate.StatusDenied || te.Code != "budget_exhausted" {
					t.Errorf("denial: %v", d.Err())
				}
			default:
				t.Errorf("decision %v", d.Kind)
			}
		}()
	}
	close(start)
	wg.Wait()
	if admitted.Load() != n || denied.Load() != 100-n {
		t.Fatalf("admitted %d, denied %d; want %d and %d", admitted.Load(), denied.Load(), n, 100-n)
	}
	// Another tenant has its own budget.
	d := admitTokens(t, e, "other", "gpt-4o-mini", 10)
	if d.Kind != tollgate.Go {
		t.Errorf("another tenant: %v", d.Kind)
	}
	d.Permit.Free()
}

// A permit nobody settles or frees is freed by its finalizer once unreachable.
func TestPermitFinalizer(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"conc\"\nconcurrency = 1\n")
	func() {
		d := admitTokens(t, e, "", "m", 1)
		if d.Kind != tollgate.Go {
			t.Fatal("first admit")
		}
	}()
	waitFor(t, 10*time.Second, "the finalizer to free the slot", func() bool {
		runtime.GC()
		d := admitTokens(t, e, "", "m", 1)
		if d.Kind == tollgate.Go {
			d.Permit.Free()
			return true
		}
		return false
	})
}
