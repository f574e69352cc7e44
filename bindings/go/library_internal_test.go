//go:build tollgate_testkit

package tollgate

// Tests of the binding against the library and its header that need the package's unexported
// names (statusNames) or C (through the helpers of testkit.go).

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// headerPath finds tollgate.h: in a -I directory of CGO_CFLAGS (run.sh and the README's commands
// set it to the header directory the package is built with), else in this repository.
func headerPath(t *testing.T) string {
	t.Helper()
	fields := strings.Fields(os.Getenv("CGO_CFLAGS"))
	var dirs []string
	for i, f := range fields {
		switch {
		case f == "-I" && i+1 < len(fields):
			dirs = append(dirs, fields[i+1])
		case strings.HasPrefix(f, "-I"):
			dirs = append(dirs, f[2:])
		}
	}
	dirs = append(dirs, filepath.Join("..", "..", "crates", "tollgate-capi", "include"))
	for _, d := range dirs {
		p := filepath.Join(d, "tollgate.h")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("tollgate.h not found in %v (the -I directories of CGO_CFLAGS, then the repository's)", dirs)
	return ""
}

// headerStatuses parses the TG_STATUS_* constants of enum tg_status: name (without the prefix)
// by number.
func headerStatuses(t *testing.T, path string) map[uint32]string {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	src := string(text)
	start := strings.Index(src, "enum tg_status")
	if start < 0 {
		t.Fatalf("%s: no enum tg_status", path)
	}
	end := strings.Index(src[start:], "};")
	if end < 0 {
		t.Fatalf("%s: enum tg_status does not end", path)
	}
	body := src[start : start+end]
	re := regexp.MustCompile(`(?m)^\s*TG_STATUS_([A-Z0-9_]+)\s*=\s*([0-9]+)\s*,?\s*$`)
	out := map[uint32]string{}
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		n, err := strconv.ParseUint(m[2], 10, 32)
		if err != nil {
			t.Fatalf("%s: TG_STATUS_%s = %s: %v", path, m[1], m[2], err)
		}
		if prev, dup := out[uint32(n)]; dup {
			t.Fatalf("%s: TG_STATUS_%s and TG_STATUS_%s are both %d", path, prev, m[1], n)
		}
		out[uint32(n)] = m[1]
	}
	// Every line of the enum that names a status must have been read.
	if got, want := len(out), len(regexp.MustCompile(`(?m)^\s*TG_STATUS_`).FindAllString(body, -1)); got != want {
		t.Fatalf("%s: read %d of the %d TG_STATUS_ constants of enum tg_status", path, got, want)
	}
	if len(out) < 2 {
		t.Fatalf("%s: only %d statuses in enum tg_status", path, len(out))
	}
	return out
}

// goStatuses reads the constants of type Status declared in the package's Go files: name by
// number.
func goStatuses(t *testing.T) map[uint32][]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	out := map[uint32][]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Status" {
					continue
				}
				for i, name := range vs.Names {
					var lit *ast.BasicLit
					if i < len(vs.Values) {
						lit, _ = vs.Values[i].(*ast.BasicLit)
					}
					if lit == nil || lit.Kind != token.INT {
						t.Fatalf("%s: Status constant %s is not an integer literal", fset.Position(name.Pos()), name.Name)
					}
					n, err := strconv.ParseUint(lit.Value, 0, 32)
					if err != nil {
						t.Fatalf("%s: %v", fset.Position(lit.Pos()), err)
					}
					out[uint32(n)] = append(out[uint32(n)], name.Name)
				}
			}
		}
	}
	return out
}

// The binding's statuses are exactly the header's: for every TG_STATUS_* constant of tollgate.h
// Go has a Status constant with that number, statusNames has the library's name for it
// (tg_status_name), and Go has no status the header lacks.
func TestStatusesMatchHeader(t *testing.T) {
	path := headerPath(t)
	header := headerStatuses(t, path)
	consts := goStatuses(t)
	t.Logf("%s: %d statuses; Go: %d Status constants, %d names", path, len(header), len(consts), len(statusNames))

	numbers := make([]uint32, 0, len(header))
	for n := range header {
		numbers = append(numbers, n)
	}
	sort.Slice(numbers, func(i, j int) bool { return numbers[i] < numbers[j] })
	for _, n := range numbers {
		cname := "TG_STATUS_" + header[n]
		lib := libStatusName(n)
		if lib == "unknown" {
			t.Errorf("%s = %d: the library calls it unknown (header and library from different builds?)", cname, n)
		}
		if names := consts[n]; len(names) != 1 {
			t.Errorf("%s = %d: Go has %d Status constants with that number %v, want 1", cname, n, len(names), names)
		}
		goName, ok := statusNames[Status(n)]
		switch {
		case !ok:
			t.Errorf("%s = %d: missing from statusNames (the library's name: %q)", cname, n, lib)
		case goName != lib:
			t.Errorf("%s = %d: statusNames says %q, tg_status_name says %q", cname, n, goName, lib)
		}
		if s := Status(n).String(); s != lib {
			t.Errorf("Status(%d).String() = %q, tg_status_name says %q", n, s, lib)
		}
	}
	for n, names := range consts {
		if _, ok := header[n]; !ok {
			t.Errorf("Go has %v = %d, which tollgate.h does not have", names, n)
		}
	}
	for s, name := range statusNames {
		if _, ok := header[uint32(s)]; !ok {
			t.Errorf("statusNames has %d (%q), which tollgate.h does not have", uint32(s), name)
		}
	}
	// A number neither knows.
	unknown := uint32(1)
	for ; ; unknown++ {
		if _, ok := header[unknown]; !ok {
			break
		}
	}
	if lib, s := libStatusName(unknown), Status(unknown).String(); lib != "unknown" || s != fmt.Sprintf("unknown(%d)", unknown) {
		t.Errorf("status %d: library %q, Go %q", unknown, lib, s)
	}
}

// The library returns empty strings as a NULL pointer with length 0, never Rust's dangling
// non-NULL pointer, which Go's stack copier rejects ("invalid pointer found on stack") once such
// a value sits in a Go frame. The binding relies on it (it reads the library's tg_str results
// as they are); the check runs in C, so a dangling pointer fails this test instead of crashing.
func TestLibraryEmptyStringsAreNull(t *testing.T) {
	up, err := StartTestUpstream(`{"words": 4}`)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	// The first request fails with 503 and is retried: the response has a history.
	if err := up.Script(`{"match":{"stream":false},"actions":["503","normal"]}`); err != nil {
		t.Fatal(err)
	}
	e, err := New(fmt.Sprintf(`version = 1
[[upstream]]
name = "test"
base_url = %q
[[route]]
model = "gpt-4o-mini"
targets = [{ upstream = "test", model = "gpt-4o-mini" }]
[[budget]]
name = "rpm"
requests_per_minute = 1000
[retry]
max_attempts = 3
backoff = { base = "10ms", max = "20ms", jitter = "none" }
retry_on = ["5xx"]
`, up.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	req := []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`)
	empty, dangling, events, err := emptyStrings(e, "gpt-4o-mini", req)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d empty strings seen (%d stream events)", empty, events)
	// At least: an error's budget, body and problem; a stream's end body and each event's
	// event and id fields.
	if empty < 5 || events < 2 {
		t.Fatalf("only %d empty strings and %d events seen: the check did not run through", empty, events)
	}
	if dangling != 0 {
		t.Errorf("%d of %d empty strings from the library have a non-NULL pointer", dangling, empty)
	}
}
