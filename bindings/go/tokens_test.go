package tollgate_test

import (
	"strings"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

func TestCountTokensAndContextWindowUseThePolicysModelTable(t *testing.T) {
	e := engine(t, "version = 1\n[models]\nmy-model = { encoding = \"cl100k_base\", context_window = 4096 }\n")
	n, err := e.CountTokens("gpt-4o", "hello world")
	if err != nil || n != (tollgate.TokenCount{Tokens: 2, Exact: true}) {
		t.Fatalf("CountTokens: %+v, %v", n, err)
	}
	if n, err := e.CountTokens("my-model", "hello world"); err != nil || n.Tokens != 2 || !n.Exact {
		t.Errorf("the policy's model: %+v, %v", n, err)
	}
	if n, err := e.CountTokens("qwen-max", "hello world"); err != nil || n.Exact || n.Tokens < 2 {
		t.Errorf("a model without a vocabulary is estimated and says so: %+v, %v", n, err)
	}
	if w, ok := e.ContextWindow("my-model"); !ok || w != 4096 {
		t.Errorf("ContextWindow(my-model) = %d, %v", w, ok)
	}
	if _, ok := e.ContextWindow("nobody-knows"); ok {
		t.Error("an unknown model has no window")
	}
	_, err = e.CountTokens("no-such-model", "x")
	if te := asError(t, err, tollgate.StatusInvalidArgument); te.Code != "unknown_model" {
		t.Errorf("code %q", te.Code)
	}
	_, err = e.CountTokens("gpt-4o", "a\xffb")
	asError(t, err, tollgate.StatusInvalidUTF8)
}

func TestCountRequestIsWhatTheUpstreamBills(t *testing.T) {
	up := upstream(t, "")
	e := callEngine(t, up, "")
	req := []byte(`{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"How many tokens is this?"}],"max_tokens":8}`)
	n, err := e.CountRequest(req)
	if err != nil || !n.Exact {
		t.Fatalf("CountRequest: %+v, %v", n, err)
	}
	r, err := e.Send(ctxTimeout(t, 10*time.Second), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Usage == nil || r.Usage.PromptTokens != n.Tokens {
		t.Errorf("billed %+v, counted %d", r.Usage, n.Tokens)
	}
	_, err = e.CountRequest([]byte("{nope"))
	asError(t, err, tollgate.StatusInvalidJSON)
	_, err = e.CountRequest([]byte(`{"messages":[]}`))
	asError(t, err, tollgate.StatusInvalidRequest)
}

func TestSplitTextCutsAtBoundariesWithByteOffsets(t *testing.T) {
	e := engine(t, "version = 1\n")
	var b strings.Builder
	for i := 0; i < 80; i++ {
		switch i % 3 {
		case 0:
			b.WriteString("Rate limits protect the upstream. A client that ignores them meets 429s. ")
		case 1:
			b.WriteString("令牌桶算法以固定速率添加令牌。 🚦 ")
		default:
			b.WriteString("GCRA keeps one timestamp per key.\n\n")
		}
	}
	text := b.String()
	for _, overlap := range []int{0, 10} {
		chunks, err := e.SplitText("gpt-4o", text, 50, overlap)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) < 10 {
			t.Fatalf("%d chunks", len(chunks))
		}
		next := 0
		var joined strings.Builder
		for i, c := range chunks {
			if c.Text != text[c.Start:c.End] || c.Tokens > 50 || !c.Exact {
				t.Fatalf("chunk %d: %+v", i, c)
			}
			own, err := e.CountTokens("gpt-4o", c.Text)
			if err != nil || own.Tokens != c.Tokens {
				t.Fatalf("chunk %d counted %d on its own, says %d (%v)", i, own.Tokens, c.Tokens, err)
			}
			if c.Start+c.Overlap != next || (overlap > 0 && i > 0 && c.Overlap == 0) || (overlap == 0 && c.Overlap != 0) {
				t.Fatalf("chunk %d: start %d overlap %d, the previous ended at %d", i, c.Start, c.Overlap, next)
			}
			next = c.End
			joined.WriteString(c.Text[c.Overlap:])
		}
		if joined.String() != text {
			t.Error("the new text of the chunks is not the text")
		}
	}
	for _, tc := range []struct {
		model        string
		text         string
		max, overlap int
		code         string
	}{
		{"gpt-4o", text, 0, 0, "zero_max"},
		{"gpt-4o", text, 10, 10, "overlap_too_large"},
		{"gpt-4o", text, 10_000_000, 0, "exceeds_context_window"},
		{"no-such-model", text, 10, 0, "unknown_model"},
		{"gpt-4o", "", 10, 0, "empty"},
		{"gpt-4o", text, -1, 0, "invalid_argument"},
	} {
		_, err := e.SplitText(tc.model, tc.text, tc.max, tc.overlap)
		if te := asError(t, err, tollgate.StatusInvalidArgument); te.Code != tc.code {
			t.Errorf("%+v: code %q", tc.code, te.Code)
		}
	}
	e.Close()
	if _, err := e.SplitText("gpt-4o", text, 10, 0); err != tollgate.ErrClosed {
		t.Errorf("after Close: %v", err)
	}
	if _, err := e.CountTokens("gpt-4o", "x"); err != tollgate.ErrClosed {
		t.Errorf("after Close: %v", err)
	}
}
