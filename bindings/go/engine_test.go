//go:build tollgate_testkit

package tollgate_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

func TestVersion(t *testing.T) {
	if v := tollgate.Version(); v == "" || v != tollgate.HeaderVersion() {
		t.Fatalf("Version() %q, HeaderVersion() %q: want equal and non-empty", v, tollgate.HeaderVersion())
	}
	if s := tollgate.StatusDenied.String(); s != "denied" {
		t.Errorf("StatusDenied.String() = %q", s)
	}
	if s := tollgate.Status(9999).String(); s != "unknown(9999)" {
		t.Errorf("unknown status: %q", s)
	}
}

func TestNewAndErrors(t *testing.T) {
	// TOML and JSON (detected).
	e := engine(t, "version = 1\n[[budget]]\nname = \"t\"\nrequests_per_minute = 1\n")
	if g := e.Generation(); g != 1 {
		t.Errorf("generation %d, want 1", g)
	}
	goAndSettle(t, e, "m")
	expectDeny(t, e, "m", "t", "budget_exhausted", tollgate.LimitRequestsPerMinute)
	j := engine(t, `{"version": 1, "budget": [{"name": "j", "requests_per_minute": 2}]}`)
	goAndSettle(t, j, "m")
	goAndSettle(t, j, "m")
	expectDeny(t, j, "m", "j", "budget_exhausted", tollgate.LimitRequestsPerMinute)

	// A refused policy: every problem listed.
	_, err := tollgate.New(TWO_PROBLEMS)
	te := asError(t, err, tollgate.StatusInvalidPolicy)
	checkTwoProblems(t, te)
	if !errors.Is(err, tollgate.ErrInvalidPolicy) || errors.Is(err, tollgate.ErrDenied) {
		t.Errorf("errors.Is with the sentinels: wrong answer for %v", err)
	}
	// Wrapped errors still match.
	wrapped := fmt.Errorf("loading: %w", err)
	var te2 *tollgate.Error
	if !errors.As(wrapped, &te2) || te2 != te || !errors.Is(wrapped, tollgate.ErrInvalidPolicy) {
		t.Errorf("errors.As / errors.Is through a wrapper fail")
	}

	// Invalid UTF-8 policy text.
	_, err = tollgate.New("version = 1\n# caf\xc3\x28 \xff\xfe\n")
	te = asError(t, err, tollgate.StatusInvalidUTF8)
	if te.Code != "invalid_utf8" || !strings.Contains(te.Message, "policy") {
		t.Errorf("invalid utf8: code %q message %q", te.Code, te.Message)
	}
	// The empty policy has no version: refused as a policy.
	_, err = tollgate.New("")
	asError(t, err, tollgate.StatusInvalidPolicy)

	// Files: a good one, a missing one, a refused one.
	p := writeTemp(t, "policy.toml", "version = 1\n[[budget]]\nname = \"f\"\nrequests_per_minute = 1\n")
	f, err := tollgate.NewFromFile(p)
	if err != nil {
		t.Fatalf("NewFromFile: %v", err)
	}
	goAndSettle(t, f, "m")
	expectDeny(t, f, "m", "f", "budget_exhausted", tollgate.LimitRequestsPerMinute)
	f.Close()
	missing := "/nonexistent/tollgate-go-test/policy.toml"
	_, err = tollgate.NewFromFile(missing)
	te = asError(t, err, tollgate.StatusIO)
	if !strings.Contains(te.Message, missing) || !errors.Is(err, tollgate.ErrIO) {
		t.Errorf("missing file: message %q does not name the path", te.Message)
	}
	_, err = tollgate.NewFromFile(writeTemp(t, "bad.toml", TWO_PROBLEMS))
	checkTwoProblems(t, asError(t, err, tollgate.StatusInvalidPolicy))

	// A bug inside tollgate is an error, and the library still works after it.
	err = tollgate.TestPanic()
	te = asError(t, err, tollgate.StatusPanic)
	if te.Code != "panic" || !strings.Contains(te.Message, "tg_test_panic was called") || !errors.Is(err, tollgate.ErrPanic) {
		t.Errorf("panic error: code %q message %q", te.Code, te.Message)
	}
	engine(t, "version = 1\n")
}

func checkTwoProblems(t *testing.T, te *tollgate.Error) {
	t.Helper()
	if len(te.Problems) < 2 {
		t.Fatalf("problems: %q, want at least 2", te.Problems)
	}
	var rpm, typo bool
	for _, p := range te.Problems {
		if p == "" || !strings.Contains(te.Message, p) {
			t.Errorf("problem %q empty or not in the message %q", p, te.Message)
		}
		rpm = rpm || strings.Contains(p, "requests_per_minute")
		typo = typo || strings.Contains(p, "concurency")
	}
	if !rpm || !typo {
		t.Errorf("both problems reported? rpm %v typo %v: %q", rpm, typo, te.Problems)
	}
	if te.Code != "invalid_policy" || te.HTTPStatus != 0 || te.Budget != "" {
		t.Errorf("code %q http %d budget %q", te.Code, te.HTTPStatus, te.Budget)
	}
}

func TestReload(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"keep\"\nrequests_per_minute = 5\n")
	gen, err := e.Reload("version = 1\n[[budget]]\nname = \"keep\"\nrequests_per_minute = 2\n")
	if err != nil || gen != 2 || e.Generation() != 2 {
		t.Fatalf("reload: gen %d, generation %d, err %v", gen, e.Generation(), err)
	}
	// Refused: every problem, the generation and the limits unchanged.
	gen, err = e.Reload(TWO_PROBLEMS)
	checkTwoProblems(t, asError(t, err, tollgate.StatusInvalidPolicy))
	if gen != 0 || e.Generation() != 2 {
		t.Errorf("refused reload: gen %d, generation %d", gen, e.Generation())
	}
	_, err = e.Reload("version = 1\n# \xff\n")
	asError(t, err, tollgate.StatusInvalidUTF8)
	_, err = e.Reload(`{"version": 1, "bud`)
	asError(t, err, tollgate.StatusInvalidPolicy)
	if e.Generation() != 2 {
		t.Errorf("generation %d after refused reloads", e.Generation())
	}
	// The running policy (2 a minute) still holds.
	goAndSettle(t, e, "m")
	goAndSettle(t, e, "m")
	expectDeny(t, e, "m", "keep", "budget_exhausted", tollgate.LimitRequestsPerMinute)

	// From a file (JSON): a new budget from the next decision.
	p := writeTemp(t, "p.json", `{"version": 1, "budget": [{"name": "fresh", "requests_per_minute": 1}]}`)
	gen, err = e.ReloadFile(p)
	if err != nil || gen != 3 {
		t.Fatalf("ReloadFile: gen %d err %v", gen, err)
	}
	goAndSettle(t, e, "m")
	expectDeny(t, e, "m", "fresh", "budget_exhausted", tollgate.LimitRequestsPerMinute)
	_, err = e.ReloadFile(writeTemp(t, "bad.toml", TWO_PROBLEMS))
	checkTwoProblems(t, asError(t, err, tollgate.StatusInvalidPolicy))
	_, err = e.ReloadFile("/nonexistent/tollgate-go-test/reload.toml")
	asError(t, err, tollgate.StatusIO)
	if e.Generation() != 3 {
		t.Errorf("generation %d, want 3", e.Generation())
	}
	expectDeny(t, e, "m", "fresh", "budget_exhausted", tollgate.LimitRequestsPerMinute)
}

// Reloads while 50 goroutines admit and settle: every decision is made under one of the
// policies, nothing breaks, and the generation counts every reload.
func TestReloadConcurrent(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = 1000000\n")
	var wg sync.WaitGroup
	var admitted atomic.Int64
	stop := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := e.Admit(tollgate.Call{Model: "m", PromptTokens: 5})
				if err != nil {
					t.Error(err)
					return
				}
				if d.Kind == tollgate.Go {
					admitted.Add(1)
					if _, err := e.Settle(d.Permit, ok200()); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		time.Sleep(2 * time.Millisecond)
		if _, err := e.Reload(fmt.Sprintf("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = %d\n", 1000000+i)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if admitted.Load() < 50 {
		t.Errorf("only %d calls admitted during the reloads", admitted.Load())
	}
	if g := e.Generation(); g != 21 {
		t.Errorf("generation %d, want 21", g)
	}
}

func TestMetrics(t *testing.T) {
	e := engine(t, "version = 1\n[[budget]]\nname = \"b\"\nrequests_per_minute = 100\n")
	goAndSettle(t, e, "m")
	m, err := e.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "# TYPE tollgate_") || !strings.Contains(m, "\ntollgate_") {
		t.Errorf("metrics without tollgate_ samples:\n%s", m)
	}
}

func TestCloseAndUseAfterClose(t *testing.T) {
	e, err := tollgate.New("version = 1\n[[budget]]\nname = \"c\"\nconcurrency = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	d := admitTokens(t, e, "", "m", 1)
	if d.Kind != tollgate.Go {
		t.Fatal("admit")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 10*time.Second)
	checks := map[string]error{}
	_, checks["Admit"] = e.Admit(tollgate.Call{Model: "m"})
	_, checks["Acquire"] = e.Acquire(tollgate.Call{Model: "m"})
	_, checks["Settle"] = e.Settle(d.Permit, ok200()) // frees the permit
	_, checks["Reload"] = e.Reload("version = 1\n")
	_, checks["ReloadFile"] = e.ReloadFile("/nonexistent")
	_, checks["Metrics"] = e.Metrics()
	_, checks["Send"] = e.Send(ctx, []byte(REQ), nil)
	_, checks["OpenStream"] = e.OpenStream(ctx, []byte(REQ), nil)
	for ev, err := range e.Stream(ctx, []byte(REQ), nil) {
		checks["Stream"] = err
		if err == nil {
			t.Errorf("stream after close yielded %+v", ev)
		}
	}
	for name, err := range checks {
		if !errors.Is(err, tollgate.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if g := e.Generation(); g != 0 {
		t.Errorf("Generation after Close = %d, want 0", g)
	}
	d.Permit.Free() // already freed by Settle: nothing happens
	if _, err := e.Settle(d.Permit, ok200()); err == nil {
		t.Error("settling a consumed permit succeeded")
	}
}

// Close while goroutines use the engine: every call either works or returns ErrClosed; none
// crashes (the race detector watches the engine pointer).
func TestCloseWhileInUse(t *testing.T) {
	for round := 0; round < 5; round++ {
		e, err := tollgate.New("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = 1000000\n")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for n := 0; ; n++ {
					d, err := e.Admit(tollgate.Call{Model: "m", PromptTokens: 5})
					if err != nil {
						if !errors.Is(err, tollgate.ErrClosed) {
							t.Errorf("admit: %v", err)
						}
						return
					}
					if d.Kind == tollgate.Go {
						if _, err := e.Settle(d.Permit, ok200()); err != nil && !errors.Is(err, tollgate.ErrClosed) {
							t.Errorf("settle: %v", err)
						}
					}
					if i%4 == 0 && n%50 == 0 {
						if _, err := e.Metrics(); err != nil && !errors.Is(err, tollgate.ErrClosed) {
							t.Errorf("metrics: %v", err)
						}
					}
				}
			}(i)
		}
		time.Sleep(20 * time.Millisecond)
		e.Close()
		wg.Wait()
	}
}

// Close with a send and a stream in flight: both end at once with StatusCancelled.
func TestCloseCancelsCalls(t *testing.T) {
	up := upstream(t, "")
	e, err := tollgate.New(fmt.Sprintf("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n", up.URL()))
	if err != nil {
		t.Fatal(err)
	}
	script(t, up, `{"match":{"stream":false},"actions":["slow_first_byte:5000"]}`)
	script(t, up, `{"match":{"stream":true},"actions":["slow_first_byte:5000"]}`)
	ctx := ctxTimeout(t, 20*time.Second)
	sendErr := make(chan error, 1)
	go func() {
		_, err := e.Send(ctx, []byte(REQ), nil)
		sendErr <- err
	}()
	streamErr := make(chan error, 1)
	go func() {
		var last error
		for _, err := range e.Stream(ctx, []byte(REQ), nil) {
			last = err
		}
		streamErr <- last
	}()
	waitFor(t, 10*time.Second, "both requests at the upstream", func() bool { return up.Requests() >= 2 })
	t0 := time.Now()
	e.Close()
	for _, ch := range []chan error{sendErr, streamErr} {
		select {
		case err := <-ch:
			te := asError(t, err, tollgate.StatusCancelled)
			if errors.Is(err, context.Canceled) {
				t.Errorf("a cancellation by Close unwraps to context.Canceled: %v", te)
			}
		case <-time.After(4 * time.Second):
			t.Fatal("a call still runs 4 s after Close")
		}
	}
	if took := time.Since(t0); took > 4*time.Second {
		t.Errorf("Close and the cancellations took %v", took)
	}
}

// Close while a stream's reader lags behind a full buffer: Close does not hang on the blocked
// worker thread, and the reader gets the buffered events, then StatusCancelled (never a
// "complete" stream with events missing).
func TestCloseWithUnreadStream(t *testing.T) {
	up := upstream(t, `{"words": 400}`)
	e, err := tollgate.New(fmt.Sprintf("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n", up.URL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	s, err := e.OpenStream(ctx, []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":400}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the request at the upstream", func() bool { return up.Requests() >= 1 })
	time.Sleep(200 * time.Millisecond) // the buffer fills; the worker thread waits for the reader
	t0 := time.Now()
	e.Close()
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("Close took %v with an unread stream", took)
	}
	var events int
	var last error
	for ev, err := range s.All() {
		if err != nil {
			last = err
			continue
		}
		if ev.Done {
			t.Error("[DONE] reached the reader although events were dropped")
		}
		events++
	}
	if events > tollgate.StreamBuffer {
		t.Errorf("%d events, more than the buffer", events)
	}
	asError(t, last, tollgate.StatusCancelled)
}

// Engines nobody closes are closed by their finalizers (no crash, no race).
func TestEngineFinalizer(t *testing.T) {
	for i := 0; i < 20; i++ {
		e, err := tollgate.New("version = 1\n[[budget]]\nname = \"b\"\nconcurrency = 1\n")
		if err != nil {
			t.Fatal(err)
		}
		d := admitTokens(t, e, "", "m", 1)
		d.Permit.Free()
	}
	runtime.GC()
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
}

// tg_engine_free documents that "calls still in flight are cancelled: their callbacks fire with
// TG_STATUS_CANCELLED". A stream that is receiving events when the engine is freed must end that
// way too, not with the STREAM_CUT that the closing runtime's dropped connection would cause
// (found while writing this binding; fixed in the library).
func TestCloseDuringActiveStream(t *testing.T) {
	up := upstream(t, `{"words": 2000}`)
	statuses := map[tollgate.Status]int{}
	for i := 0; i < 20; i++ {
		e, err := tollgate.New(fmt.Sprintf("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n", up.URL()))
		if err != nil {
			t.Fatal(err)
		}
		s, err := e.OpenStream(ctxTimeout(t, 30*time.Second), []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":2000}`), nil)
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		ended := make(chan error, 1)
		go func() {
			n := 0
			var last error
			for _, err := range s.All() {
				if n++; n == 5 {
					close(started)
				}
				last = err
			}
			ended <- last
		}()
		<-started
		e.Close()
		err = <-ended
		var te *tollgate.Error
		if errors.As(err, &te) {
			statuses[te.Status]++
		}
		if err != nil && !errors.Is(err, tollgate.ErrCancelled) {
			t.Errorf("round %d: a stream in flight when the engine was closed ended with %v, want cancelled", i, err)
		}
	}
	t.Logf("final statuses: %v", statuses)
}
