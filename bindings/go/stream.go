package tollgate

// #include "shim.h"
import "C"

import (
	"context"
	"encoding/json"
	"iter"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
)

// StreamBuffer is the number of events a stream buffers between tollgate's worker thread and the
// goroutine reading it. When the reader falls this far behind, the worker thread waits for it
// (backpressure: the stream slows down, as the C ABI documents), so read streams promptly:
// tollgate has few worker threads (at most 4) shared by every call of an engine.
const StreamBuffer = 64

// Event is one event of a streamed answer, copied into Go memory.
type Event struct {
	Event string // the SSE event: field; empty for the default ("message")
	Data  []byte // a chat.completion.chunk JSON, or "[DONE]" for the last event
	ID    string // the last SSE id:; empty when none
	Done  bool   // the data: [DONE] marker, the last event of a complete stream
}

// streamState is what the stream callback reaches through its cgo.Handle.
type streamState struct {
	events  chan Event    // bounded; closed by the final callback
	final   chan final    // buffered 1: the final callback never blocks on it
	stop    chan struct{} // closed when the reader stops: the callback drops events
	closing chan struct{} // the engine's: closed when Close starts
	dropped atomic.Bool   // an event was dropped because the engine was closing
}

//export tgGoStreamEvent
func tgGoStreamEvent(h C.uintptr_t, ev *C.tg_event, end *C.tg_response, err *C.tg_error) {
	s := cgo.Handle(h).Value().(*streamState)
	if ev == nil {
		s.final <- final{resp: end, err: err}
		close(s.events)
		return
	}
	e := Event{
		Event: goString(ev.event),
		Data:  goBytes(ev.data),
		ID:    goString(ev.id),
		Done:  bool(ev.done),
	}
	select {
	case s.events <- e:
	case <-s.stop:
	case <-s.closing:
		s.dropped.Store(true)
	}
}

// Stream is a streamed call in progress (OpenStream). Read it with All, then Response has the
// summary; Close stops it early. Not for concurrent use by several goroutines.
type Stream struct {
	eng  *Engine
	ctx  context.Context
	task *C.tg_task
	h    cgo.Handle
	st   *streamState

	stopOnce sync.Once
	ended    bool // the final callback was received and the C handles freed
	read     bool // All was called
	resp     *Response
	err      error
}

// OpenStream starts a streamed call (tollgate sets "stream": true) on tollgate's worker threads
// and returns at once. Until the first event a failed attempt is retried or moved to another
// target as the policy says; after it the stream is never retried: a cut ends with
// StatusStreamCut. Errors of the request itself (bad JSON, ...) are returned here. Read the
// events with All; Close the stream if you stop before its end.
func (e *Engine) OpenStream(ctx context.Context, request []byte, opts *Options) (*Stream, error) {
	if ctx.Err() != nil {
		return nil, cancelledBy(ctx, statusError(StatusCancelled, "the context ended before the call started"))
	}
	st := &streamState{
		events:  make(chan Event, StreamBuffer),
		final:   make(chan final, 1),
		stop:    make(chan struct{}),
		closing: e.closing,
	}
	h := cgo.NewHandle(st)
	task, err := e.start(true, request, opts, h, true)
	if err != nil {
		h.Delete()
		return nil, err
	}
	s := &Stream{eng: e, ctx: ctx, task: task, h: h, st: st}
	runtime.SetFinalizer(s, (*Stream).Close)
	return s, nil
}

// cancel makes the callback drop events and cancels the call (nothing happens if it ended).
func (s *Stream) cancel() {
	s.stopOnce.Do(func() {
		close(s.st.stop)
		C.tg_task_cancel(s.task)
	})
}

// end takes the final callback's result (waiting for it) and frees the C handles.
func (s *Stream) end(cancelledByCtx bool) {
	if s.ended {
		return
	}
	f := <-s.st.final
	s.ended = true
	C.tg_task_free(s.task)
	s.task = nil
	s.h.Delete()
	runtime.SetFinalizer(s, nil)
	switch {
	case s.st.dropped.Load():
		// Close began while the reader lagged, and events were dropped: whatever the call's
		// end, the reader did not get the whole stream.
		msg := "the engine was closed while the stream ran; events were dropped"
		if f.err != nil {
			msg += " (the call ended with: " + takeError(C.TG_STATUS_CANCELLED, f.err).Error() + ")"
		} else {
			C.tg_response_free(f.resp)
		}
		s.err = statusError(StatusCancelled, msg)
	case f.err != nil:
		e := takeError(C.TG_STATUS_CANCELLED, f.err)
		if cancelledByCtx {
			e = cancelledBy(s.ctx, e)
		}
		s.err = e
	default:
		s.resp = takeResponse(f.resp)
	}
	runtime.KeepAlive(s.eng)
}

// All returns the stream's events in order. A complete stream ends with the [DONE] event
// (Done true); a stream that fails yields its error last (with a zero Event): StatusStreamCut
// when it broke off, StatusCancelled when the context ended (unwrapping to the context's error)
// or the engine was closed, or any call error (StatusDenied, StatusGaveUp, ...). Breaking out of
// the loop cancels the call and waits until tollgate has released it (its concurrency slot is
// free when the loop statement ends). All can be ranged over once.
func (s *Stream) All() iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if s.read {
			yield(Event{}, statusError(StatusInvalidArgument, "the stream was read already"))
			return
		}
		s.read = true
		defer s.Close()
		done := s.ctx.Done()
		for {
			select {
			case ev, ok := <-s.st.events:
				if !ok { // the final callback came
					s.end(false)
					if s.err != nil {
						yield(Event{}, s.err)
					}
					return
				}
				if !yield(ev, nil) {
					return // Close (deferred) cancels and waits
				}
			case <-done:
				s.cancel()
				s.end(true)
				err := s.err
				if err == nil {
					// It completed just as the context ended, with events unread.
					err = cancelledBy(s.ctx, statusError(StatusCancelled, "the context ended before the stream was read"))
				}
				yield(Event{}, err)
				return
			}
		}
	}
}

// Response is the summary of a completed stream (status, headers, usage, settlement; empty
// Body), or nil until All has ended or when the stream failed.
func (s *Stream) Response() *Response { return s.resp }

// Err is the stream's final error once All has ended (nil for a complete stream).
func (s *Stream) Err() error { return s.err }

// Close stops the stream if it is still running (cancelling the call), waits for tollgate's
// final callback and frees the C handles. Idempotent; returns nil.
func (s *Stream) Close() error {
	if s.ended {
		return nil
	}
	s.cancel()
	s.end(false)
	return nil
}

// Stream is the iterator form of OpenStream: ranging over it starts the call, yields its events
// in order and, when the call fails, its error last (see Stream.All); a failure to start is
// yielded as the only element. Each range starts a new call. Breaking out of the loop cancels
// the call; cancelling ctx cancels it too.
//
//	for ev, err := range eng.Stream(ctx, body, nil) {
//		if err != nil { ... }
//		if ev.Done { break }
//		...
//	}
func (e *Engine) Stream(ctx context.Context, request []byte, opts *Options) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		s, err := e.OpenStream(ctx, request, opts)
		if err != nil {
			yield(Event{}, err)
			return
		}
		s.All()(yield)
	}
}

// StreamJSON is Stream with the request marshalled from v.
func (e *Engine) StreamJSON(ctx context.Context, v any, opts *Options) iter.Seq2[Event, error] {
	body, err := json.Marshal(v)
	if err != nil {
		return func(yield func(Event, error) bool) { yield(Event{}, err) }
	}
	return e.Stream(ctx, body, opts)
}
