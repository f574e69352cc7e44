//go:build tollgate_testkit

package tollgate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

func TestSend(t *testing.T) {
	up := upstream(t, "")
	e := callEngine(t, up, RETRY_POLICY)
	ctx := ctxTimeout(t, 30*time.Second)
	r, err := e.Send(ctx, []byte(REQ), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 200 || !bytes.Contains(r.Body, []byte(`"choices"`)) || r.Source != tollgate.SourceUpstream || r.Attempts != 1 || len(r.History) != 0 {
		t.Errorf("response %+v", r)
	}
	if r.Usage == nil || r.Usage.CompletionTokens != 8 || r.Usage.TotalTokens != r.Usage.PromptTokens+8 {
		t.Errorf("usage %+v", r.Usage)
	}
	if r.Settlement == nil || r.Settlement.Tokens != r.Usage.TotalTokens {
		t.Errorf("settlement %+v", r.Settlement)
	}
	if ct, ok := r.Header("content-type"); !ok || !strings.Contains(ct, "application/json") {
		t.Errorf("content-type %q %v", ct, ok)
	}
	if _, ok := r.Header("x-not-there"); ok {
		t.Error("absent header found")
	}
	var body struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := r.JSON(&body); err != nil || len(body.Choices) != 1 || body.Choices[0].Message.Content == "" {
		t.Errorf("body: %v %+v", err, body)
	}
	r.Free()
	r.Free()
	if _, ok := r.Header("content-type"); ok {
		t.Error("header after Free")
	}

	// A typed request and options.
	r, err = e.SendJSON(ctx, tollgate.ChatRequest{Model: "gpt-4o-mini", MaxTokens: 4,
		Messages: []tollgate.Message{{Role: "user", Content: "hi"}}},
		&tollgate.Options{Tenant: "acme", Priority: 3, Deadline: time.Minute, CacheMode: tollgate.CacheBypass})
	if err != nil || r.Status != 200 {
		t.Fatal(r, err)
	}

	// 503 then normal: retried, with the history.
	script(t, up, `{"actions":["503","normal"]}`)
	r, err = e.Send(ctx, []byte(REQ), nil)
	if err != nil || r.Attempts != 2 || len(r.History) != 1 || r.History[0].Outcome != "status_503" || r.History[0].Number != 1 {
		t.Fatalf("retried: %+v %v", r, err)
	}
}

func TestSendErrors(t *testing.T) {
	up := upstream(t, "")
	e := callEngine(t, up, RETRY_POLICY)
	ctx := ctxTimeout(t, 30*time.Second)
	before := up.Requests()
	_, err := e.Send(ctx, []byte(REQ[:len(REQ)-3]), nil)
	asError(t, err, tollgate.StatusInvalidJSON)
	if !errors.Is(err, tollgate.ErrInvalidJSON) {
		t.Error("errors.Is ErrInvalidJSON")
	}
	_, err = e.Send(ctx, []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"`+"\xc3\x28"+`"}]}`), nil)
	asError(t, err, tollgate.StatusInvalidUTF8)
	_, err = e.Send(ctx, nil, nil)
	asError(t, err, tollgate.StatusInvalidJSON)
	_, err = e.Send(ctx, []byte(`{"model":"gpt-4o-mini"}`), nil)
	asError(t, err, tollgate.StatusInvalidRequest)
	_, err = e.Send(ctx, []byte(REQ), &tollgate.Options{Route: "nope"})
	asError(t, err, tollgate.StatusNoUpstream)
	_, err = e.Send(ctx, []byte(REQ), &tollgate.Options{Tenant: "\xff"})
	asError(t, err, tollgate.StatusInvalidUTF8)
	_, err = e.Send(ctx, []byte(REQ), &tollgate.Options{CacheMode: 77})
	asError(t, err, tollgate.StatusInvalidArgument)
	for ev, err := range e.Stream(ctx, []byte(REQ[:10]), nil) {
		if te := asError(t, err, tollgate.StatusInvalidJSON); te == nil || ev.Data != nil {
			t.Error("stream of bad JSON")
		}
	}
	if up.Requests() != before {
		t.Errorf("bad requests reached the upstream")
	}

	// A 400: not retried, the status and the body.
	script(t, up, `{"actions":["status:400"]}`)
	_, err = e.Send(ctx, []byte(REQ), nil)
	te := asError(t, err, tollgate.StatusGaveUp)
	if te.Code != "not_retryable" || te.HTTPStatus != 400 || !bytes.Contains(te.Body, []byte("error")) || te.Budget != "" {
		t.Errorf("400: %+v", te)
	}
	script(t, up, `{"actions":["503","503","503"]}`)
	_, err = e.Send(ctx, []byte(REQ), nil)
	if te := asError(t, err, tollgate.StatusGaveUp); te.Code != "attempts_exhausted" || te.HTTPStatus != 503 {
		t.Errorf("503s: %+v", te)
	}

	// A denial through the call API: the budget and when to retry; never sent.
	d := callEngine(t, up, "[[budget]]\nname = \"one-per-minute\"\nrequests_per_minute = 1\n")
	if _, err := d.Send(ctx, []byte(REQ), nil); err != nil {
		t.Fatal(err)
	}
	before = up.Requests()
	_, err = d.Send(ctx, []byte(REQ), nil)
	te = asError(t, err, tollgate.StatusDenied)
	if te.Budget != "one-per-minute" || te.Code != "budget_exhausted" || !te.HasRetryAfter || te.RetryAfter <= 0 {
		t.Errorf("denied: %+v", te)
	}
	if up.Requests() != before {
		t.Error("a denied call reached the upstream")
	}
	// No upstream in the policy.
	_, err = engine(t, "version = 1\n").Send(ctx, []byte(REQ), nil)
	asError(t, err, tollgate.StatusNoUpstream)
}

// 100 goroutines send at once through one engine: all succeed.
func TestSendConcurrent100(t *testing.T) {
	e := callEngine(t, shared, "")
	ctx := ctxTimeout(t, 60*time.Second)
	before := shared.Requests()
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"request ` + strconv.Itoa(i) + `"}],"max_tokens":8}`)
			r, err := e.Send(ctx, body, &tollgate.Options{Tenant: "t" + strconv.Itoa(i%7)})
			if err != nil {
				t.Errorf("send %d: %v", i, err)
				return
			}
			if r.Status != 200 || r.Usage == nil || r.Usage.CompletionTokens != 8 {
				t.Errorf("send %d: %+v", i, r)
				return
			}
			ok.Add(1)
		}(i)
	}
	wg.Wait()
	if ok.Load() != 100 {
		t.Fatalf("%d of 100 succeeded", ok.Load())
	}
	if got := shared.Requests() - before; got != 100 {
		t.Errorf("upstream saw %d requests, want 100", got)
	}
}

// The same budget through the call API: exactly N of 100 concurrent sends get through.
func TestSendBudgetAcrossGoroutines(t *testing.T) {
	const n = 23
	e := callEngine(t, shared, "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 23\nwhen_exhausted = \"deny\"\n")
	ctx := ctxTimeout(t, 60*time.Second)
	var wg sync.WaitGroup
	var sent, denied atomic.Int32
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.Send(ctx, []byte(REQ), &tollgate.Options{Tenant: "acme"})
			var te *tollgate.Error
			switch {
			case err == nil:
				sent.Add(1)
			case errors.As(err, &te) && te.Status == tollgate.StatusDenied && te.Budget == "per-tenant":
				denied.Add(1)
			default:
				t.Errorf("send: %v", err)
			}
		}()
	}
	wg.Wait()
	if sent.Load() != n || denied.Load() != 100-n {
		t.Fatalf("sent %d, denied %d; want %d and %d", sent.Load(), denied.Load(), n, 100-n)
	}
}

// Cancelling the context of a send whose upstream holds the first byte for 5 s: Send returns at
// once with the cancellation, and the concurrency slot is free again.
func TestSendCancel(t *testing.T) {
	up := upstream(t, "")
	e := callEngine(t, up, "[[budget]]\nname = \"conc\"\nconcurrency = 1\n")
	script(t, up, `{"actions":["slow_first_byte:5000"]}`)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 30*time.Second))
	defer cancel()
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		_, err := e.Send(ctx, []byte(REQ), nil)
		done <- err
	}()
	waitFor(t, 10*time.Second, "the request at the upstream", func() bool { return up.Requests() >= 1 })
	// The running call holds the only slot.
	if d := admitTokens(t, e, "", "gpt-4o-mini", 1); d.Kind != tollgate.Deny || d.Budget != "conc" {
		t.Fatalf("while the call runs: %v %q", d.Kind, d.Budget)
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Send did not return within 3 s of the cancel")
	}
	if took := time.Since(t0); took > 4500*time.Millisecond {
		t.Errorf("Send took %v, not ended by the cancel", took)
	}
	te := asError(t, err, tollgate.StatusCancelled)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, tollgate.ErrCancelled) || te.Code != "cancelled" {
		t.Errorf("cancel error: %v (code %q)", err, te.Code)
	}
	// The slot is free as soon as Send returned.
	d := admitTokens(t, e, "", "gpt-4o-mini", 1)
	if d.Kind != tollgate.Go {
		t.Fatalf("after the cancel: %v %v", d.Kind, d.Err())
	}
	d.Permit.Free()

	// A context deadline: DeadlineExceeded.
	script(t, up, `{"actions":["slow_first_byte:5000"]}`)
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	t0 = time.Now()
	_, err = e.Send(dctx, []byte(REQ), nil)
	asError(t, err, tollgate.StatusCancelled)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("Send with a 300 ms context took %v", took)
	}
	// A context that is already done: nothing is sent.
	before := up.Requests()
	_, err = e.Send(ctx, []byte(REQ), nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, tollgate.ErrCancelled) {
		t.Errorf("done context: %v", err)
	}
	if up.Requests() != before {
		t.Error("a send with a done context reached the upstream")
	}
}

// chunkContent is the delta text of a chat.completion.chunk.
func chunkContent(t *testing.T, data []byte) string {
	var c struct {
		Object  string `json:"object"`
		Choices []struct {
			Delta struct{ Content string } `json:"delta"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("chunk %q: %v", data, err)
	}
	if c.Object != "chat.completion.chunk" {
		t.Errorf("chunk object %q", c.Object)
	}
	if len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Delta.Content
}

func TestStream(t *testing.T) {
	up := upstream(t, `{"event_ids": true, "words": 12}`)
	e := callEngine(t, up, RETRY_POLICY)
	ctx := ctxTimeout(t, 30*time.Second)
	var events []tollgate.Event
	for ev, err := range e.Stream(ctx, []byte(REQ), nil) {
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, ev)
	}
	if len(events) < 3 {
		t.Fatalf("%d events", len(events))
	}
	last := events[len(events)-1]
	if !last.Done || string(last.Data) != "[DONE]" {
		t.Errorf("last event %+v, want [DONE]", last)
	}
	prev := 0
	for i, ev := range events[:len(events)-1] {
		if ev.Done {
			t.Errorf("event %d is [DONE] before the end", i)
		}
		chunkContent(t, ev.Data)
		id, err := strconv.Atoi(ev.ID)
		if err != nil || id <= prev {
			t.Errorf("event %d id %q after %d: not in order", i, ev.ID, prev)
		}
		prev = id
	}

	// OpenStream: the same, then the summary.
	s, err := e.OpenStream(ctx, []byte(REQ), nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	r := s.Response()
	if n < 3 || s.Err() != nil || r == nil || r.Status != 200 || len(r.Body) != 0 || r.Attempts != 1 {
		t.Fatalf("OpenStream: %d events, err %v, response %+v", n, s.Err(), r)
	}
	if r.Usage == nil || r.Usage.CompletionTokens != 8 || r.Settlement == nil || r.Settlement.Tokens != r.Usage.TotalTokens {
		t.Errorf("stream usage %+v settlement %+v", r.Usage, r.Settlement)
	}
	if ct, _ := r.Header("content-type"); !strings.Contains(ct, "text/event-stream") {
		t.Errorf("content-type %q", ct)
	}
	for _, err := range s.All() {
		asError(t, err, tollgate.StatusInvalidArgument) // ranging twice
	}
	s.Close()
	s.Close()
}

// A stream cut after 3 events: the 3 events, then the StreamCut error last; not retried.
func TestStreamCut(t *testing.T) {
	up := upstream(t, "")
	e := callEngine(t, up, RETRY_POLICY)
	ctx := ctxTimeout(t, 30*time.Second)
	script(t, up, `{"match":{"stream":true},"actions":["cut:3"]}`)
	before := up.Requests()
	var events int
	var errs []error
	for ev, err := range e.Stream(ctx, []byte(REQ), nil) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(errs) > 0 {
			t.Error("an event after the error")
		}
		if ev.Done {
			t.Error("[DONE] in a cut stream")
		}
		events++
	}
	if events != 3 || len(errs) != 1 {
		t.Fatalf("%d events, errors %v; want 3 and one error", events, errs)
	}
	asError(t, errs[0], tollgate.StatusStreamCut)
	if !errors.Is(errs[0], tollgate.ErrStreamCut) {
		t.Error("errors.Is ErrStreamCut")
	}
	if got := up.Requests() - before; got != 1 {
		t.Errorf("%d requests: a cut stream was retried", got)
	}

	// A cut before any event is retried: one whole stream.
	script(t, up, `{"match":{"stream":true},"actions":["cut:0","normal"]}`)
	s, err := e.OpenStream(ctx, []byte(REQ), nil)
	if err != nil {
		t.Fatal(err)
	}
	var lastDone bool
	for ev, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		lastDone = ev.Done
	}
	if !lastDone || s.Response().Attempts != 2 || len(s.Response().History) != 1 {
		t.Errorf("cut:0: done %v attempts %d", lastDone, s.Response().Attempts)
	}
}

// Breaking out of the loop cancels the stream: the slot is free when the loop ends.
func TestStreamBreak(t *testing.T) {
	up := upstream(t, `{"words": 40}`)
	e := callEngine(t, up, "[[budget]]\nname = \"conc\"\nconcurrency = 1\n")
	ctx := ctxTimeout(t, 30*time.Second)
	script(t, up, `{"match":{"stream":true},"actions":["slow_drip:200"]}`)
	t0 := time.Now()
	n := 0
	for ev, err := range e.Stream(ctx, []byte(REQ), nil) {
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.Data) == 0 {
			t.Error("empty event")
		}
		n++
		if d := admitTokens(t, e, "", "gpt-4o-mini", 1); d.Kind != tollgate.Deny {
			t.Errorf("the stream does not hold the slot: %v", d.Kind)
			d.Permit.Free()
		}
		break
	}
	if took := time.Since(t0); n != 1 || took > 3*time.Second {
		t.Errorf("%d events in %v", n, took)
	}
	d := admitTokens(t, e, "", "gpt-4o-mini", 1)
	if d.Kind != tollgate.Go {
		t.Fatalf("after break: %v %v", d.Kind, d.Err())
	}
	d.Permit.Free()

	// Cancelling the context before the first byte: the cancellation is yielded last.
	script(t, up, `{"match":{"stream":true},"actions":["slow_first_byte:5000"]}`)
	before := up.Requests()
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		for up.Requests() < before+1 {
			time.Sleep(2 * time.Millisecond)
		}
		cancel()
	}()
	t0 = time.Now()
	var errs []error
	for ev, err := range e.Stream(cctx, []byte(REQ), nil) {
		if err == nil {
			t.Errorf("event %+v before the first byte", ev)
			continue
		}
		errs = append(errs, err)
	}
	if len(errs) != 1 || !errors.Is(errs[0], context.Canceled) || !errors.Is(errs[0], tollgate.ErrCancelled) {
		t.Fatalf("errors %v", errs)
	}
	if took := time.Since(t0); took > 4*time.Second {
		t.Errorf("cancelled stream took %v", took)
	}
	d = admitTokens(t, e, "", "gpt-4o-mini", 1)
	if d.Kind != tollgate.Go {
		t.Fatalf("after cancel: %v", d.Kind)
	}
	d.Permit.Free()

	// OpenStream then Close without reading.
	s, err := e.OpenStream(ctx, []byte(REQ), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if d := admitTokens(t, e, "", "gpt-4o-mini", 1); d.Kind != tollgate.Go {
		t.Fatalf("after Close: %v", d.Kind)
	} else {
		d.Permit.Free()
	}
}

// A slow reader and many concurrent streams: the bounded buffer holds the worker threads back,
// nothing is lost or reordered.
func TestStreamsConcurrentSlowReaders(t *testing.T) {
	up := upstream(t, `{"event_ids": true, "words": 30}`)
	e := callEngine(t, up, "")
	ctx := ctxTimeout(t, 60*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			prev, done := 0, false
			for ev, err := range e.Stream(ctx, []byte(REQ), nil) {
				if err != nil {
					t.Errorf("stream %d: %v", i, err)
					return
				}
				if i%3 == 0 {
					time.Sleep(time.Millisecond)
				}
				if ev.Done {
					done = true
					continue
				}
				id, _ := strconv.Atoi(ev.ID)
				if id <= prev {
					t.Errorf("stream %d: id %d after %d", i, id, prev)
				}
				prev = id
			}
			if !done {
				t.Errorf("stream %d ended without [DONE]", i)
			}
		}(i)
	}
	wg.Wait()
}
