// Install test of the Go binding: a module outside the repository that imports
// tollgate.dev/go/tollgate (from the release's module proxy folder) and links the installed C
// prefix through pkg-config. Admit + settle, then one send through the test upstream whose base
// URL is the first argument. Exits 1 on any failure.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"tollgate.dev/go/tollgate"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s BASE_URL\n", os.Args[0])
		os.Exit(2)
	}
	if tollgate.Version() != tollgate.HeaderVersion() {
		fail("library %s, header %s", tollgate.Version(), tollgate.HeaderVersion())
	}
	eng, err := tollgate.New(fmt.Sprintf(`version = 1
[[upstream]]
name = "test"
base_url = "%s"
[[route]]
model = "gpt-4o-mini"
targets = [{ upstream = "test", model = "gpt-4o-mini" }]
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 2
`, os.Args[1]))
	if err != nil {
		fail("New: %v", err)
	}
	defer eng.Close()

	call := tollgate.Call{Tenant: "acme", Model: "gpt-4o-mini", PromptTokens: 12}
	d, err := eng.Admit(call)
	if err != nil || d.Kind != tollgate.Go {
		fail("first admit: %v %v", d.Kind, err)
	}
	if v, err := eng.Settle(d.Permit, tollgate.Outcome{Sent: true, Status: 200}); err != nil || v.Kind != tollgate.Done {
		fail("settle: %v %v", v.Kind, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := eng.Send(ctx, []byte(`{"model": "gpt-4o-mini", "max_tokens": 5,
		"messages": [{"role": "user", "content": "hello from Go"}]}`), &tollgate.Options{Tenant: "acme"})
	if err != nil {
		fail("send: %v", err)
	}
	if resp.Status != 200 || !strings.Contains(string(resp.Body), "chat.completion") {
		fail("send answered %d: %s", resp.Status, resp.Body)
	}
	if resp.Usage == nil || resp.Usage.CompletionTokens != 5 {
		fail("send: usage %+v", resp.Usage)
	}

	d, err = eng.Admit(call)
	if err != nil || d.Kind != tollgate.Deny || d.Budget != "per-tenant" {
		fail("third admit: %v %q %v", d.Kind, d.Budget, err)
	}
	fmt.Printf("go install test (%s): ok\n", tollgate.Version())
}
