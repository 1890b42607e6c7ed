package registry

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func pct(p float64) *float64 { return &p }

// registerSplit registers image id with one container and the options.
func registerSplit(t *testing.T, r *Registry, id int64, opts ServiceOptions) *Service {
	t.Helper()
	spec := svcSpec(id, ctr("c", 9000+int(id)))
	spec.Options = opts
	return mustRegister(t, r, spec)
}

// turns takes n turns of image 1's split and writes each as the entry's
// index ("-" for the image itself).
func turns(r *Registry, n int, skip uint32) string {
	var b strings.Builder
	for range n {
		i := r.Lookup(1).SplitTurn(skip)
		if i < 0 {
			b.WriteByte('-')
		} else {
			b.WriteByte(byte('0' + i))
		}
	}
	return b.String()
}

func TestSplitTurnSequence(t *testing.T) {
	tests := []struct {
		name  string
		split []SplitTarget
		n     int
		want  string
	}{
		{"10 percent: one in ten", []SplitTarget{{ImageID: 2, Percent: pct(10)}}, 20, "-----0---------0----"},
		{"25 percent: one in four", []SplitTarget{{ImageID: 2, Percent: pct(25)}}, 8, "--0---0-"},
		{"50 and 25", []SplitTarget{{ImageID: 2, Percent: pct(50)}, {ImageID: 3, Percent: pct(25)}}, 8, "0-100-10"},
		{"100 percent", []SplitTarget{{ImageID: 2, Percent: pct(100)}}, 4, "0000"},
		{"0 percent: only on request", []SplitTarget{{ImageID: 2, Percent: pct(0)}}, 5, "-----"},
		{"0.5 percent: one in 200", []SplitTarget{{ImageID: 2, Percent: pct(0.5)}}, 200, strings.Repeat("-", 100) + "0" + strings.Repeat("-", 99)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			registerSplit(t, r, 2, ServiceOptions{})
			registerSplit(t, r, 3, ServiceOptions{})
			registerSplit(t, r, 1, ServiceOptions{Split: tt.split})
			if got := turns(r, tt.n, 0); got != tt.want {
				t.Fatalf("%d turns: %s, want %s", tt.n, got, tt.want)
			}
		})
	}
}

func TestSplitTurnSkip(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 2, ServiceOptions{})
	registerSplit(t, r, 3, ServiceOptions{})
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(50)}, {ImageID: 3, Percent: pct(50)}}})
	if got := turns(r, 4, 1); got != "1111" {
		t.Fatalf("without entry 0: %s, want 1111 (the image itself has no share)", got)
	}
	if got := turns(r, 4, 3); got != "----" {
		t.Fatalf("without both entries: %s, want ---- (the image itself)", got)
	}
	// A request that could only stay takes no turn: the rotation goes on
	// where it was.
	r2 := newTestRegistry(t, Options{})
	registerSplit(t, r2, 2, ServiceOptions{})
	registerSplit(t, r2, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(25)}}})
	var b strings.Builder
	for i := range 8 {
		b.WriteString(turns(r2, 1, 0))
		if i%2 == 0 {
			b.WriteString(turns(r2, 1, 1)) // a "never" request between
		}
	}
	if got, want := b.String(), "---0-----0--"; got != want {
		t.Fatalf("turns with never requests between: %s, want %s", got, want)
	}
}

func TestSplitTurnRestartsWhenTheSharesChange(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 2, ServiceOptions{})
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(25)}}})
	turns(r, 3, 0)
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(50)}}})
	if got := turns(r, 4, 0); got != "-0-0" {
		t.Fatalf("after the share changed: %s, want -0-0 (a fresh rotation)", got)
	}
	// the same shares in a new version keep the rotation going
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(50)}}})
	if got := turns(r, 2, 0); got != "-0" {
		t.Fatalf("after a re-registration with the same share: %s, want -0", got)
	}
}

func TestSplitTurnAllocatesNothing(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 2, ServiceOptions{})
	svc := registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(10)}}})
	svc.SplitTurn(0)
	if n := testing.AllocsPerRun(100, func() { svc.SplitTurn(0) }); n != 0 {
		t.Fatalf("SplitTurn allocates %v times", n)
	}
}

func TestMirrorTurn(t *testing.T) {
	for _, tt := range []struct {
		percent float64
		want    string
	}{{100, "xxxx"}, {50, "-x-x"}, {25, "---x---x"}, {0, "----"}, {10, "---------x"}} {
		r := newTestRegistry(t, Options{})
		registerSplit(t, r, 3, ServiceOptions{})
		svc := registerSplit(t, r, 1, ServiceOptions{Mirror: &Mirror{ImageID: 3, Percent: pct(tt.percent)}})
		var b strings.Builder
		for range len(tt.want) {
			if svc.MirrorTurn() {
				b.WriteByte('x')
			} else {
				b.WriteByte('-')
			}
		}
		if b.String() != tt.want {
			t.Errorf("mirror %v%%: %s, want %s", tt.percent, b.String(), tt.want)
		}
	}
}

func TestSplitDefaults(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 3, ServiceOptions{})
	svc := registerSplit(t, r, 1, ServiceOptions{Mirror: &Mirror{ImageID: 3, Percent: pct(5)}})
	m := svc.Options.Mirror
	if m.MaxBody != DefaultMirrorMaxBody || !reflect.DeepEqual(m.Methods, []string{"GET", "HEAD", "OPTIONS"}) || m.MaxInFlight != DefaultMirrorMaxInFlight {
		t.Fatalf("mirror defaults: %+v", m)
	}
	js, _ := json.Marshal(svc.View().ServiceOptions)
	if want := `"mirror":{"image_id":3,"percent":5,"max_body":"64KiB","methods":["GET","HEAD","OPTIONS"],"max_in_flight":100}`; !strings.Contains(string(js), want) {
		t.Fatalf("echo %s lacks %s", js, want)
	}
}

func TestDecodeSplitRejects(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		loc   []any
		typ   string
		msg   string
	}{
		{"split without percent", `"split":[{"image_id":2}]`, loc("body", "split", 0, "percent"), "missing",
			"split[0].percent is required: the share of the image's requests, from 0 to 100"},
		{"split percent 101", `"split":[{"image_id":2,"percent":101}]`, loc("body", "split", 0, "percent"), "value_error",
			"split[0].percent must be from 0 to 100, got 101"},
		{"split percents above 100", `"split":[{"image_id":2,"percent":60},{"image_id":3,"percent":50}]`, loc("body", "split"), "value_error",
			"the percents of split add up to 110, more than 100: lower them"},
		{"split image_id 0", `"split":[{"percent":5}]`, loc("body", "split", 0, "image_id"), "value_error",
			"split[0].image_id must be the positive image_id of a registered image, got 0"},
		{"split twice to one image", `"split":[{"image_id":2,"percent":5},{"image_id":2,"percent":5}]`, loc("body", "split", 1, "image_id"), "value_error",
			"split[1].image_id 2 is also split[0]"},
		{"split header not a name", `"split":[{"image_id":2,"percent":5,"header":"X Canary"}]`, loc("body", "split", 0, "header"), "value_error",
			`split[0].header "X Canary" is not a header name`},
		{"split cookie not a name", `"split":[{"image_id":2,"percent":5,"cookie":"a;b"}]`, loc("body", "split", 0, "cookie"), "value_error",
			`split[0].cookie "a;b" is not a cookie name`},
		{"mirror without percent", `"mirror":{"image_id":3}`, loc("body", "mirror", "percent"), "missing",
			"mirror.percent is required"},
		{"mirror percent -1", `"mirror":{"image_id":3,"percent":-1}`, loc("body", "mirror", "percent"), "value_error",
			"mirror.percent must be from 0 to 100, got -1"},
		{"mirror max_body too large", `"mirror":{"image_id":3,"percent":1,"max_body":"1GiB"}`, loc("body", "mirror", "max_body"), "value_error",
			"mirror.max_body must be from 1 byte to 16MiB, got 1073741824 bytes"},
		{"mirror lower-case method", `"mirror":{"image_id":3,"percent":1,"methods":["get"]}`, loc("body", "mirror", "methods", 0), "value_error",
			`mirror.methods[0] "get" is not an upper-case method such as GET or POST`},
		{"mirror no methods", `"mirror":{"image_id":3,"percent":1,"methods":[]}`, loc("body", "mirror", "methods"), "value_error",
			"mirror.methods is empty"},
		{"mirror max_in_flight negative", `"mirror":{"image_id":3,"percent":1,"max_in_flight":-1}`, loc("body", "mirror", "max_in_flight"), "value_error",
			"mirror.max_in_flight must be from 1 to 100000, got -1"},
		{"mirror too many methods", `"mirror":{"image_id":3,"percent":1,"methods":[` + strings.Repeat(`"GET",`, 33) + `"GET"]}`, loc("body", "mirror", "methods"), "value_error",
			"mirror.methods has 34 entries; list at most 32 methods"},
		{"mirror max_in_flight above the ceiling", `"mirror":{"image_id":3,"percent":1,"max_in_flight":100001}`, loc("body", "mirror", "max_in_flight"), "value_error",
			"mirror.max_in_flight must be from 1 to 100000, got 100001"},
		{"mirror max_body above the ceiling", `"mirror":{"image_id":3,"percent":1,"max_body":16777217}`, loc("body", "mirror", "max_body"), "value_error",
			"mirror.max_body must be from 1 byte to 16MiB, got 16777217 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRegistration(1, []byte(optionsBody(RoundRobin, tt.extra)), nil)
			fe := fieldsOf(t, err)
			if len(fe) != 1 || !reflect.DeepEqual(fe[0].Loc, tt.loc) || fe[0].Type != tt.typ || !strings.Contains(fe[0].Msg, tt.msg) {
				t.Fatalf("errors %+v\nwant one at %v of type %s saying %q", fe, tt.loc, tt.typ, tt.msg)
			}
		})
	}
}

func TestDecodeMirrorMaxBody(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  Size
	}{{`"64KiB"`, 64 << 10}, {`"1MB"`, 1_000_000}, {`4096`, 4096}, {`"2mib"`, 2 << 20}} {
		spec, err := DecodeRegistration(1, []byte(optionsBody(RoundRobin, `"mirror":{"image_id":3,"percent":1,"max_body":`+tt.value+`}`)), nil)
		if err != nil {
			t.Fatalf("max_body %s: %v", tt.value, err)
		}
		if spec.Options.Mirror.MaxBody != tt.want {
			t.Fatalf("max_body %s = %d, want %d", tt.value, spec.Options.Mirror.MaxBody, tt.want)
		}
	}
	_, err := DecodeRegistration(1, []byte(optionsBody(RoundRobin, `"mirror":{"image_id":3,"percent":1,"max_body":"lots"}`)), nil)
	fe := fieldsOf(t, err)
	if len(fe) != 1 || !reflect.DeepEqual(fe[0].Loc, loc("body", "mirror", "max_body")) || !strings.Contains(fe[0].Msg, `a size such as "64KiB"`) {
		t.Fatalf("max_body lots: %+v", fe)
	}
}

// fieldsOf returns the field errors of a registry error.
func fieldsOf(t *testing.T, err error) []FieldError {
	t.Helper()
	e, ok := err.(*Error)
	if !ok || e.Kind != KindInvalid {
		t.Fatalf("error %v (%T), want a 422", err, err)
	}
	return e.Fields
}

func TestRegisterChecksReferences(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 2, ServiceOptions{})
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(10)}}})
	registerSplit(t, r, 4, ServiceOptions{Split: []SplitTarget{{ImageID: 1, Percent: pct(10)}}})
	tests := []struct {
		name string
		id   int64
		opts ServiceOptions
		loc  []any
		msg  string
	}{
		{"unknown split target", 1, ServiceOptions{Split: []SplitTarget{{ImageID: 9, Percent: pct(10)}}}, loc("body", "split", 0, "image_id"),
			"split[0].image_id 9 is not registered: register image 9 first, or remove it from split"},
		{"split to itself", 1, ServiceOptions{Split: []SplitTarget{{ImageID: 1, Percent: pct(10)}}}, loc("body", "split", 0, "image_id"),
			"split[0].image_id 1 is the image itself"},
		{"cycle of two", 2, ServiceOptions{Split: []SplitTarget{{ImageID: 1, Percent: pct(10)}}}, loc("body", "split", 0, "image_id"),
			"split[0].image_id 1 makes a cycle: 2 → 1 → 2; remove image 2 from the split of image 1, or this entry"},
		{"cycle of three", 2, ServiceOptions{Split: []SplitTarget{{ImageID: 4, Percent: pct(10)}}}, loc("body", "split", 0, "image_id"),
			"split[0].image_id 4 makes a cycle: 2 → 4 → 1 → 2; remove image 2 from the split of image 1"},
		{"unknown mirror target", 1, ServiceOptions{Mirror: &Mirror{ImageID: 9, Percent: pct(1)}}, loc("body", "mirror", "image_id"),
			"mirror.image_id 9 is not registered"},
		{"mirror to itself", 1, ServiceOptions{Mirror: &Mirror{ImageID: 1, Percent: pct(1)}}, loc("body", "mirror", "image_id"),
			"mirror.image_id 1 is the image itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.Lookup(tt.id)
			spec := svcSpec(tt.id, ctr("c", 9100))
			spec.Options = tt.opts
			_, err := r.Register(spec)
			fe := fieldsOf(t, err)
			if len(fe) != 1 || !reflect.DeepEqual(fe[0].Loc, tt.loc) || !strings.Contains(fe[0].Msg, tt.msg) {
				t.Fatalf("errors %+v\nwant one at %v saying %q", fe, tt.loc, tt.msg)
			}
			if r.Lookup(tt.id) != before {
				t.Fatal("a refused registration changed the service")
			}
		})
	}
}

func TestRemovedTargetLeavesAWarning(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 2, ServiceOptions{})
	registerSplit(t, r, 3, ServiceOptions{})
	registerSplit(t, r, 1, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(10)}}, Mirror: &Mirror{ImageID: 3, Percent: pct(1)}})
	if w := r.Lookup(1).View().Warning; w != "" {
		t.Fatalf("warning %q with every image registered", w)
	}
	if _, err := r.Remove(2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Remove(3); err != nil {
		t.Fatal(err)
	}
	w := r.Lookup(1).View().Warning
	for _, want := range []string{"split[0] names image_id 2, which is not registered: its share stays on image_id 1",
		"mirror names image_id 3, which is not registered: nothing is mirrored"} {
		if !strings.Contains(w, want) {
			t.Fatalf("warning %q lacks %q", w, want)
		}
	}
}

func TestApplyStaticReferences(t *testing.T) {
	r := newTestRegistry(t, Options{})
	one := svcSpec(1, ctr("c", 9001))
	one.Options.Split = []SplitTarget{{ImageID: 2, Percent: pct(10)}}
	two := svcSpec(2, ctr("c", 9002))
	if err := r.ApplyStatic([]ServiceSpec{one, two}); err != nil {
		t.Fatalf("static services naming one declared after: %v", err)
	}
	two.Options.Split = []SplitTarget{{ImageID: 1, Percent: pct(10)}}
	err := r.ApplyStatic([]ServiceSpec{one, two})
	if err == nil || !strings.Contains(err.Error(), "static service 1: split.0.image_id: split[0].image_id 2 makes a cycle: 1 → 2 → 1") {
		t.Fatalf("a static cycle: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "65536": 65536, "64KiB": 65536, "64kb": 64000, "1 MiB": 1 << 20, "2GB": 2e9} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KiB", "-1", "1.5KiB", "1TB", "99999999999999999999"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for s, want := range map[Size]string{64 << 10: `"64KiB"`, 3 << 20: `"3MiB"`, 1000: `1000`} {
		if js, _ := json.Marshal(s); string(js) != want {
			t.Errorf("Size %d marshals to %s, want %s", s, js, want)
		}
	}
}

// TestMirrorBudget: takes that fit pass and others fail, whatever the
// concurrency; what is given back can be taken again; 0 is no limit.
func TestMirrorBudget(t *testing.T) {
	var b MirrorBudget
	b.SetLimit(1000)
	var wg sync.WaitGroup
	var took atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if b.Take(7) {
					took.Add(7)
				}
			}
		}()
	}
	wg.Wait()
	if b.Used() != took.Load() || b.Used() > 1000 || b.Used() < 1000-6 {
		t.Fatalf("used %d, took %d, limit 1000", b.Used(), took.Load())
	}
	if b.Take(7) {
		t.Fatal("a take past the limit passed")
	}
	b.Give(b.Used())
	if !b.Take(1000) || b.Take(1) {
		t.Fatal("the budget given back cannot be taken again, or the limit moved")
	}
	b.SetLimit(0)
	if !b.Take(1 << 40) {
		t.Fatal("no limit refused a take")
	}
}
