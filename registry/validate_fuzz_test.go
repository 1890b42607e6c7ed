package registry

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"testing"
	"unicode"
	"unicode/utf8"
)

// Fuzz targets for what the orchestrator sends: whatever the body and query,
// decoding never panics, answers a 422 (KindInvalid) or yields a spec that
// satisfies every limit of the data model, and a decoded spec can be applied
// to a registry whose views encode as JSON.
//
//	go test -run '^$' -fuzz '^FuzzDecodeRegistration$' -fuzztime 60s ./registry/
//
// Seeds are below and in testdata/fuzz/<FuzzName>/.

// fuzzRegistry returns an empty registry with the default options, except
// that hostnames resolve to nothing instead of going to the system resolver:
// the guard then lets them through, as it does when DNS fails without
// allowed_upstreams, and a fuzz run makes no DNS queries.
func fuzzRegistry() *Registry {
	return New(Options{Guard: &Guard{Resolve: func(context.Context, string) ([]netip.Addr, error) {
		return nil, errors.New("no DNS while fuzzing")
	}}})
}

// checkRejected fails unless err is a validation error.
func checkRejected(t *testing.T, err error) {
	t.Helper()
	if KindOf(err) != KindInvalid {
		t.Fatalf("error of kind %d, want KindInvalid (%d): %v", KindOf(err), KindInvalid, err)
	}
	if err.Error() == "" {
		t.Fatalf("validation error with an empty message: %#v", err)
	}
}

// checkFuzzText fails unless s is what checkText lets through: at most max
// bytes of valid UTF-8 without control characters.
func checkFuzzText(t *testing.T, field, s string, max int) {
	t.Helper()
	if len(s) > max {
		t.Fatalf("%s of %d bytes accepted, the limit is %d", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		t.Fatalf("%s %q is not valid UTF-8", field, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			t.Fatalf("%s %q contains the control character %U", field, s, r)
		}
	}
}

// checkContainerSpec fails unless c satisfies the data model's limits.
func checkContainerSpec(t *testing.T, c ContainerSpec) {
	t.Helper()
	if c.ContainerID == "" {
		t.Fatalf("container accepted without a container_id: %+v", c)
	}
	checkFuzzText(t, "container_id", c.ContainerID, MaxIDLength)
	checkFuzzText(t, "name", c.Name, MaxNameLength)
	if c.Host != "" {
		if msg := CheckHost(c.Host); msg != "" {
			t.Fatalf("host %q accepted, but CheckHost says: %s", c.Host, msg)
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		t.Fatalf("port %d accepted", c.Port)
	}
	if c.Weight < 0 || c.Weight > MaxWeight {
		t.Fatalf("weight %d accepted", c.Weight)
	}
	if s, ok := ParseStatus(string(c.Status)); !ok || s != c.Status {
		t.Fatalf("status %q accepted", c.Status)
	}
}

// checkDial fails unless the container's dial address splits back into its
// host and port: a host may not smuggle a port or a second address in.
func checkDial(t *testing.T, c *Container) {
	t.Helper()
	host, port, err := net.SplitHostPort(c.DialAddr())
	if err != nil {
		t.Fatalf("dial address %q of container %q does not split: %v", c.DialAddr(), c.ContainerID, err)
	}
	if host != c.Host || port != strconv.Itoa(c.Port) {
		t.Fatalf("dial address %q splits into %q and %q, want %q and %d", c.DialAddr(), host, port, c.Host, c.Port)
	}
}

// checkServiceJSON fails unless the service's view encodes as JSON and its
// strings survive the round trip unchanged.
func checkServiceJSON(t *testing.T, svc *Service) {
	t.Helper()
	b, err := json.Marshal(svc.View())
	if err != nil {
		t.Fatalf("encoding the view of service %d: %v", svc.ImageID, err)
	}
	var back ServiceView
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("decoding the view of service %d: %v\n%s", svc.ImageID, err, b)
	}
	if back.ImageID != svc.ImageID || back.ImageName != svc.ImageName || len(back.Containers) != len(svc.Containers) {
		t.Fatalf("view of service %d does not survive JSON: %s", svc.ImageID, b)
	}
	for i, c := range svc.Containers {
		if bc := back.Containers[i]; bc.ContainerID != c.ContainerID || bc.Name != c.Name || bc.Host != c.Host {
			t.Fatalf("container %q does not survive JSON: %+v", c.ContainerID, bc)
		}
	}
}

func FuzzDecodeRegistration(f *testing.F) {
	seeds := []struct {
		id    int64
		body  string
		query string
	}{
		{1, `[{"container_id":"web-1","host":"127.0.0.1","port":9001}]`, "image_name=web"},
		{42, `{"image_name":"web","algorithm":"least_conn","external_port":8001,"containers":[` +
			`{"container_id":"a","name":"first","host":"10.0.0.5","port":80,"image_id":42,"status":"starting","weight":5},` +
			`{"container_id":"b","host":"::1","port":65535,"status":"draining","weight":0}]}`, ""},
		{7, `{"image_name":"body","containers":[]}`, "image_name=query&algorithm=round_robin&external_port=9000"},
		{1, `[]`, ""},
		{1, `[{"container_id":"a","port":1},{"container_id":"a","port":2}]`, "image_name=dup"},
		{1, `[{"container_id":"","port":0,"weight":1001,"status":"sleeping"}]`, "image_name=x"},
		{1, `[{"container_id":"a\u0000b","port":80,"host":"http://evil:80/"}]`, "image_name=%00"},
		{1, `[{"container_id":"a","port":80,"host":"169.254.169.254"}]`, "image_name=metadata"},
		{1, `[{"container_id":"a","port":80,"image_id":2}]`, "image_name=other"},
		{1, `[{"container_id":"a","port":"80"}]`, "image_name=x"},
		{1, `[{"container_id":"a","port":1e3}]`, "image_name=x"},
		{1, `[{"container_id":"a","port":99999999999999999999}]`, "image_name=x"},
		{1, `[null, 1, "a", []]`, "image_name=x"},
		{1, `{"containers":null}`, "image_name=x&external_port=-1&algorithm=random"},
		{1, `{"image_name":123}`, ""},
		{1, `[{"container_id":"a","port":80`, "image_name=x"},
		{1, "\xff\xfe[]", "image_name=x"},
		{1, `  `, "image_name=%zz"},
		{0, `[]`, "image_name=zero"},
		{-1, `[]`, "image_name=negative"},
		{9223372036854775807, `[{"container_id":"max","port":80}]`, "image_name=max"},
	}
	for _, s := range seeds {
		f.Add(s.id, []byte(s.body), s.query)
	}
	f.Fuzz(func(t *testing.T, id int64, body []byte, rawQuery string) {
		query, err := url.ParseQuery(rawQuery)
		if err != nil {
			query = url.Values{}
		}
		spec, err := DecodeRegistration(id, body, query)
		if id <= 0 {
			return // the handlers only decode positive ids; not panicking is all
		}
		if err != nil {
			checkRejected(t, err)
			return
		}
		if spec.ImageID != id {
			t.Fatalf("spec of image %d for image_id %d", spec.ImageID, id)
		}
		if spec.ImageName == "" {
			t.Fatal("registration accepted without an image_name")
		}
		checkFuzzText(t, "image_name", spec.ImageName, MaxNameLength)
		if _, ok := ParseAlgorithm(string(spec.Algorithm)); !ok {
			t.Fatalf("algorithm %q accepted", spec.Algorithm)
		}
		if spec.ExternalPort < 0 || spec.ExternalPort > 65535 {
			t.Fatalf("external_port %d accepted", spec.ExternalPort)
		}
		seen := map[string]bool{}
		for _, c := range spec.Containers {
			checkContainerSpec(t, c)
			if seen[c.ContainerID] {
				t.Fatalf("container_id %q accepted twice", c.ContainerID)
			}
			seen[c.ContainerID] = true
		}

		r := fuzzRegistry()
		svc, err := r.Register(spec)
		if err != nil {
			if k := KindOf(err); k != KindInvalid && k != KindConflict {
				t.Fatalf("registering a decoded spec: error of kind %d: %v", k, err)
			}
			if r.Lookup(id) != nil {
				t.Fatalf("rejected registration of image %d was applied", id)
			}
			return
		}
		if r.Lookup(id) != svc || len(svc.Containers) != len(spec.Containers) {
			t.Fatalf("registered service %d is not the one looked up, or lost containers", id)
		}
		for _, c := range svc.Containers {
			checkDial(t, c)
		}
		checkServiceJSON(t, svc)
		for _, v := range r.Services() {
			checkServiceJSON(t, v)
		}
	})
}

func FuzzDecodeContainer(f *testing.F) {
	seeds := []struct {
		id          int64
		containerID string
		body        string
	}{
		{1, "web-1", `{"host":"127.0.0.1","port":9001}`},
		{1, "web-1", `{"container_id":"web-1","name":"n","host":"db.internal","port":80,"image_id":1,"status":"unhealthy","weight":1000}`},
		{1, "web-1", `{"container_id":"web-2","port":80}`},
		{1, "", `{"container_id":"web-1","port":80}`},
		{1, "a\x00b", `{"port":80}`},
		{1, "\xff", `{"port":80}`},
		{1, "web-1", `{"port":80,"image_id":2}`},
		{1, "web-1", `{"port":80,"host":""}`},
		{1, "web-1", `{"port":80,"host":"[::1]"}`},
		{1, "web-1", `{"port":80,"host":"fe80::1"}`},
		{1, "web-1", `{"port":65536,"weight":-1,"status":"HEALTHY"}`},
		{1, "web-1", `[{"port":80}]`},
		{1, "web-1", `{"port":80,"name":null}`},
		{0, "zero", `{"port":80}`},
	}
	for _, s := range seeds {
		f.Add(s.id, s.containerID, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, id int64, containerID string, body []byte) {
		c, err := DecodeContainer(id, containerID, body)
		if id <= 0 {
			return
		}
		if err != nil {
			checkRejected(t, err)
			return
		}
		if c.ContainerID != containerID {
			t.Fatalf("container %q decoded for path container_id %q", c.ContainerID, containerID)
		}
		checkContainerSpec(t, c)

		r := fuzzRegistry()
		if _, err := r.Register(ServiceSpec{ImageID: id, ImageName: "fuzz"}); err != nil {
			t.Fatalf("registering an empty service: %v", err)
		}
		put, err := r.PutContainer(id, c)
		if err != nil {
			if k := KindOf(err); k != KindInvalid {
				t.Fatalf("putting a decoded container: error of kind %d: %v", k, err)
			}
			return
		}
		checkDial(t, put)
		svc := r.Lookup(id)
		if svc == nil || svc.Container(containerID) != put {
			t.Fatalf("container %q is not in service %d after the put", containerID, id)
		}
		checkServiceJSON(t, svc)
	})
}

func FuzzDecodePatch(f *testing.F) {
	for _, s := range []string{
		`{"status":"draining"}`,
		`{"weight":5}`,
		`{"status":"healthy","weight":0}`,
		`{}`,
		`{"status":"sleeping","weight":1001}`,
		`{"weight":-1}`,
		`{"weight":1.5}`,
		`{"status":null,"weight":null}`,
		`{"status":1}`,
		`[{"status":"healthy"}]`,
		`{"weight":18446744073709551616}`,
		`{"status":"draining"`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := DecodePatch(body)
		if err != nil {
			checkRejected(t, err)
			return
		}
		if p.Status == nil && p.Weight == nil && p.Usage == [3]**float64{} {
			t.Fatal("patch accepted that changes nothing")
		}
		if p.Status != nil {
			if s, ok := ParseStatus(string(*p.Status)); !ok || s != *p.Status {
				t.Fatalf("status %q accepted", *p.Status)
			}
		}
		if p.Weight != nil && (*p.Weight < 0 || *p.Weight > MaxWeight) {
			t.Fatalf("weight %d accepted", *p.Weight)
		}

		r := fuzzRegistry()
		spec := ServiceSpec{ImageID: 1, ImageName: "fuzz", Containers: []ContainerSpec{
			{ContainerID: "a", Port: 80, Status: StatusHealthy, Weight: DefaultWeight},
		}}
		if _, err := r.Register(spec); err != nil {
			t.Fatalf("registering: %v", err)
		}
		c, err := r.PatchContainer(1, "a", p)
		if err != nil {
			t.Fatalf("applying a decoded patch: %v", err)
		}
		if p.Status != nil && c.Status != *p.Status || p.Weight != nil && c.Weight != *p.Weight {
			t.Fatalf("patch %+v applied as status %q weight %d", p, c.Status, c.Weight)
		}
		svc := r.Lookup(1)
		if got := len(svc.Available()) == 1; got != c.Available() {
			t.Fatalf("container available=%v, but the service lists %d available", c.Available(), len(svc.Available()))
		}
		checkServiceJSON(t, svc)
	})
}
