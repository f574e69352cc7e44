//go:build tollgate_testkit

package tollgate_test

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tollgate.dev/go/tollgate"
)

// SIGPIPE is raised on the thread that writes to a socket whose peer has gone. In a Go program a
// SIGPIPE on a thread Go did not create, with no handler installed by non-Go code, kills the
// process (os/signal, "Go programs that use cgo"). tollgate's threads (its workers and the test
// upstream's) block SIGPIPE themselves when they start: their writes then fail with EPIPE, which
// tollgate handles, and the binding needs no signal handling of its own.

// threadInfo is one thread of this process, from /proc/self/task (Linux).
type threadInfo struct {
	tid     string
	comm    string
	blocked uint64 // SigBlk
	pending uint64 // SigPnd: raised for this thread, not delivered (e.g. blocked)
}

const sigpipeBit = uint64(1) << (uint(syscall.SIGPIPE) - 1)

func threads(t *testing.T) []threadInfo {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*")
	if err != nil {
		t.Fatal(err)
	}
	var out []threadInfo
	for _, d := range dirs {
		comm, err := os.ReadFile(d + "/comm")
		if err != nil {
			continue // the thread ended
		}
		status, err := os.ReadFile(d + "/status")
		if err != nil {
			continue
		}
		ti := threadInfo{tid: filepath.Base(d), comm: strings.TrimSpace(string(comm))}
		for _, line := range strings.Split(string(status), "\n") {
			key, value, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
			switch key {
			case "SigBlk":
				if err != nil {
					t.Fatalf("%s/status: SigBlk %q", d, value)
				}
				ti.blocked = n
			case "SigPnd":
				if err != nil {
					t.Fatalf("%s/status: SigPnd %q", d, value)
				}
				ti.pending = n
			}
		}
		out = append(out, ti)
	}
	return out
}

// tollgateThreads counts the threads named tollgate-* by name, how many of them block SIGPIPE,
// and on how many a SIGPIPE is pending.
//
// A thread's name is not proof that tollgate started it: Linux gives a new thread the name of
// the thread that creates it, and Go's runtime starts its own threads (Ms, which unblock every
// signal) from whichever thread needs one — a tollgate worker running a callback into Go
// included. So a "tollgate-worker" with SIGPIPE unblocked may be one of Go's; the checks below
// ask that tollgate's own threads exist and block SIGPIPE, and that SIGPIPE never reaches the
// process (TestPeerGoneMidResponseNoSIGPIPE), rather than that every such name blocks it.
func tollgateThreads(t *testing.T) (byName, blocking map[string]int, pending int) {
	t.Helper()
	byName, blocking = map[string]int{}, map[string]int{}
	for _, ti := range threads(t) {
		if !strings.HasPrefix(ti.comm, "tollgate-") {
			continue
		}
		byName[ti.comm]++
		if ti.blocked&sigpipeBit != 0 {
			blocking[ti.comm]++
		} else {
			t.Logf("thread %s (%s) does not block SIGPIPE (SigBlk %016x): one of Go's, named after its creator", ti.tid, ti.comm, ti.blocked)
		}
		if ti.pending&sigpipeBit != 0 {
			pending++
		}
	}
	return byName, blocking, pending
}

func skipUnlessLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads thread signal masks from /proc (Linux)")
	}
}

// The threads the library starts block SIGPIPE, although the goroutines that make them start
// (New, Send, StartTestUpstream) run on Go threads that do not: the library does it itself.
func TestLibraryThreadsBlockSIGPIPE(t *testing.T) {
	skipUnlessLinux(t)
	up := upstream(t, "")
	e := callEngine(t, up, "")
	if _, err := e.Send(ctxTimeout(t, 20*time.Second), []byte(REQ), nil); err != nil {
		t.Fatal(err)
	}
	goThreads, goBlocking := 0, 0
	for _, ti := range threads(t) {
		if !strings.HasPrefix(ti.comm, "tollgate-") {
			goThreads++
			if ti.blocked&sigpipeBit != 0 {
				goBlocking++
			}
		}
	}
	t.Logf("other threads (Go's): %d, %d of them block SIGPIPE (a Go runtime thread may block every signal)", goThreads, goBlocking)
	byName, blocking, _ := tollgateThreads(t)
	t.Logf("tollgate threads: %v, blocking SIGPIPE: %v", byName, blocking)
	// The engine's workers (at least one after a Send) and the test upstream's threads.
	if blocking["tollgate-worker"] == 0 {
		t.Error("no tollgate-worker thread blocking SIGPIPE after a Send")
	}
	if blocking["tollgate-testki"] == 0 { // comm is cut to 15 bytes
		t.Error("no tollgate-testkit thread blocking SIGPIPE with a test upstream running")
	}
}

// Peers that go away mid-response do not kill the process: tollgate drops connections while the
// test upstream streams to them (breaking out of streams, closing engines mid-stream: how the
// SIGPIPE of the library's threads was first seen), and the upstream's threads go on writing to
// the dead sockets. SIGPIPE is watched with signal.Notify meanwhile, so that one reaching a
// thread that does not block it fails the test instead of ending the process.
func TestPeerGoneMidResponseNoSIGPIPE(t *testing.T) {
	skipUnlessLinux(t)
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGPIPE)
	defer signal.Stop(sigs)

	up := upstream(t, `{"words": 2000}`)
	policy := fmt.Sprintf("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n", up.URL())
	req := []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":2000}`)
	ctx := ctxTimeout(t, 60*time.Second)
	kept := engine(t, policy)
	for i := 0; i < 10; i++ {
		// Break out of a stream after 5 events: tollgate closes the connection.
		n := 0
		for _, err := range kept.Stream(ctx, req, nil) {
			if err != nil {
				t.Fatal(err)
			}
			if n++; n == 5 {
				break
			}
		}
		// Close an engine while its stream runs: the engine's connections go with it.
		e, err := tollgate.New(policy)
		if err != nil {
			t.Fatal(err)
		}
		s, err := e.OpenStream(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		n = 0
		for range s.All() {
			if n++; n == 5 {
				e.Close()
			}
		}
	}
	// Give the upstream's last writes to the dead sockets a moment (nothing is timed).
	time.Sleep(200 * time.Millisecond)
	select {
	case s := <-sigs:
		t.Errorf("%v reached the process: a thread that writes to sockets does not block it", s)
	default:
	}
	byName, blocking, pending := tollgateThreads(t)
	// Pending SIGPIPEs show that the scenario raised it on tollgate's threads (held blocked).
	t.Logf("tollgate threads %v (blocking SIGPIPE: %v); SIGPIPE raised and held blocked on %d of them", byName, blocking, pending)
}
