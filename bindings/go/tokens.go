package tollgate

// #include "shim.h"
import "C"

import (
	"runtime"
)

// TokenCount is a token count, and whether it is exact (the model's vocabulary) or an
// estimate.
type TokenCount struct {
	Tokens uint64
	Exact  bool
}

// Chunk is a piece of a text cut by SplitText. Text is text[Start:End] of the string given (no
// copy); its first Overlap bytes repeat the end of the previous chunk, so the concatenation of
// every chunk's Text[Overlap:] is the text.
type Chunk struct {
	Text    string
	Start   int
	End     int
	Overlap int
	// Tokens is the chunk's count, counted on its own text; at most the maxTokens asked for.
	Tokens uint64
	// Exact is false when the model has no vocabulary and Tokens is an estimate.
	Exact bool
}

// CountTokens counts the tokens of text for model with the engine's model table (the bundled
// table with the policy's [models]): exact for models with a vocabulary, else an estimate. A
// model the table does not know is an *Error of StatusInvalidArgument with Code
// "unknown_model".
func (e *Engine) CountTokens(model, text string) (TokenCount, error) {
	ptr, err := e.lock()
	if err != nil {
		return TokenCount{}, err
	}
	r := C.tg_go_count_tokens(ptr, strPtr(model), C.size_t(len(model)), strPtr(text),
		C.size_t(len(text)))
	e.unlock()
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return TokenCount{}, takeError(r.status, r.err)
	}
	return TokenCount{Tokens: uint64(r.tokens), Exact: bool(r.exact)}, nil
}

// CountRequest counts the prompt tokens of a chat request (its JSON body) as admission counts
// them, per-message overhead and reply priming included: what the upstream bills as
// prompt_tokens.
func (e *Engine) CountRequest(request []byte) (TokenCount, error) {
	ptr, err := e.lock()
	if err != nil {
		return TokenCount{}, err
	}
	r := C.tg_go_count_request(ptr, bytesPtr(request), C.size_t(len(request)))
	e.unlock()
	runtime.KeepAlive(request)
	if r.status != C.TG_STATUS_OK {
		return TokenCount{}, takeError(r.status, r.err)
	}
	return TokenCount{Tokens: uint64(r.tokens), Exact: bool(r.exact)}, nil
}

// ContextWindow is the context window of model in the engine's model table; false when the
// table does not know it (or the engine is closed).
func (e *Engine) ContextWindow(model string) (uint64, bool) {
	ptr, err := e.lock()
	if err != nil {
		return 0, false
	}
	w := uint64(C.tg_go_context_window(ptr, strPtr(model), C.size_t(len(model))))
	e.unlock()
	runtime.KeepAlive(e)
	return w, w > 0
}

// SplitText cuts text into chunks of at most maxTokens tokens of model: between paragraphs,
// else sentences and line breaks, else clauses, else words, inside a word only when it alone
// is too long; greedy, linear in the text, each chunk counted on its own text. With overlap >
// 0 each chunk after the first starts with about that many tokens of the previous one's end.
//
// Bad input is an *Error of StatusInvalidArgument whose Code says what: "zero_max",
// "overlap_too_large", "exceeds_context_window", "unknown_model", "empty", "char_too_large"
// (also for a negative maxTokens or overlap); text that is not UTF-8 is StatusInvalidUTF8.
func (e *Engine) SplitText(model, text string, maxTokens, overlap int) ([]Chunk, error) {
	if maxTokens < 0 || overlap < 0 {
		return nil, statusError(StatusInvalidArgument, "maxTokens and overlap must not be negative")
	}
	ptr, err := e.lock()
	if err != nil {
		return nil, err
	}
	r := C.tg_go_split_text(ptr, strPtr(model), C.size_t(len(model)), strPtr(text),
		C.size_t(len(text)), C.size_t(maxTokens), C.size_t(overlap))
	e.unlock()
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	defer C.tg_chunks_free(r.chunks)
	n := int(C.tg_chunks_len(r.chunks))
	out := make([]Chunk, 0, n)
	for i := 0; i < n; i++ {
		c := C.tg_chunks_get(r.chunks, C.size_t(i))
		start, end := int(c.start), int(c.end)
		out = append(out, Chunk{
			Text:    text[start:end],
			Start:   start,
			End:     end,
			Overlap: int(c.overlap),
			Tokens:  uint64(c.tokens),
			Exact:   bool(c.exact),
		})
	}
	return out, nil
}
