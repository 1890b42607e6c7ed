package registry

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// query builds a query map from key, value pairs.
func query(kv ...string) map[string][]string {
	q := map[string][]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		q[kv[i]] = append(q[kv[i]], kv[i+1])
	}
	return q
}

// named is the query of a registration that names its image, so a case
// fails on one thing only.
var named = query("image_name", "app")

func loc(parts ...any) []any { return parts }

// checkInvalid asserts that err is a 422 carrying exactly one FieldError at
// wantLoc, or, when wantLoc is nil, a 422 with a detail and no field list.
func checkInvalid(t *testing.T, err error, wantLoc []any) {
	t.Helper()
	if err == nil {
		t.Fatal("accepted; want a 422 error")
	}
	if k := KindOf(err); k != KindInvalid {
		t.Fatalf("kind = %d, want KindInvalid (%d): %v", k, KindInvalid, err)
	}
	e := err.(*Error)
	if wantLoc == nil {
		if len(e.Fields) != 0 || e.Detail == "" {
			t.Fatalf("want a detail-only error, got detail %q fields %+v", e.Detail, e.Fields)
		}
		return
	}
	if len(e.Fields) != 1 {
		t.Fatalf("want exactly one field error at %v, got %+v", wantLoc, e.Fields)
	}
	f := e.Fields[0]
	if !reflect.DeepEqual(f.Loc, wantLoc) {
		t.Fatalf("loc = %#v, want %#v (msg %q)", f.Loc, wantLoc, f.Msg)
	}
	if f.Msg == "" || f.Type == "" {
		t.Fatalf("field error without msg or type: %+v", f)
	}
	if err.Error() == "" {
		t.Fatal("empty error text")
	}
}

func TestDecodeRejects(t *testing.T) {
	long := strings.Repeat("x", 256)
	reg := func(body string, q map[string][]string) func() error {
		return func() error { _, err := DecodeRegistration(7, []byte(body), q); return err }
	}
	put := func(containerID, body string) func() error {
		return func() error { _, err := DecodeContainer(7, containerID, []byte(body)); return err }
	}
	patch := func(body string) func() error {
		return func() error { _, err := DecodePatch([]byte(body)); return err }
	}
	imageID := func(s string) func() error {
		return func() error { _, err := ParseImageID(s); return err }
	}
	ctr := func(fields string) string { return `[{"container_id":"a","port":80` + fields + `}]` }

	tests := []struct {
		name string
		call func() error
		loc  []any // nil: a detail-only 422
	}{
		// DecodeRegistration: the body as a whole.
		{"register/malformed array", reg(`[{"container_id":"a","port":80}`, named), nil},
		{"register/malformed object", reg(`{"image_name":"app","containers":[}`, named), nil},
		{"register/trailing garbage", reg(`[] x`, named), nil},
		{"register/empty body", reg(``, named), nil},
		{"register/body is a string", reg(`"containers"`, named), nil},
		{"register/body is a number", reg(`42`, named), nil},
		{"register/body is null", reg(`null`, named), nil},
		{"register/body is true", reg(`true`, named), nil},
		{"register/item not an object", reg(`[1]`, named), loc("body", 0)},
		{"register/item is null", reg(`[null]`, named), loc("body", 0)},
		{"register/object without containers", reg(`{"image_name":"app"}`, nil), loc("body", "containers")},
		{"register/containers null", reg(`{"image_name":"app","containers":null}`, nil), loc("body", "containers")},
		{"register/containers not a list", reg(`{"image_name":"app","containers":{}}`, nil), loc("body", "containers")},
		{"register/image_name as number", reg(`{"image_name":5,"containers":[]}`, nil), loc("body", "image_name")},

		// Wrong types in a container.
		{"register/port as a non-numeric string", reg(`[{"container_id":"a","port":"eighty"}]`, named), loc("body", 0, "port")},
		{"register/port as float", reg(`[{"container_id":"a","port":80.5}]`, named), loc("body", 0, "port")},
		{"register/port beyond int64", reg(`[{"container_id":"a","port":1e30}]`, named), loc("body", 0, "port")},
		{"register/weight as float", reg(ctr(`,"weight":1.5`), named), loc("body", 0, "weight")},
		{"register/weight as a non-numeric string", reg(ctr(`,"weight":"two"`), named), loc("body", 0, "weight")},
		{"register/container_id as number", reg(`[{"container_id":12,"port":80}]`, named), loc("body", 0, "container_id")},
		{"register/status as number", reg(ctr(`,"status":1`), named), loc("body", 0, "status")},
		{"register/host as list", reg(ctr(`,"host":["a"]`), named), loc("body", 0, "host")},
		{"register/image_id as a non-numeric string", reg(ctr(`,"image_id":"seven"`), named), loc("body", 0, "image_id")},
		{"register/object form wrong type", reg(`{"image_name":"app","containers":[{"container_id":"a","port":true}]}`, nil),
			loc("body", "containers", 0, "port")},

		// Ports.
		{"register/port 0", reg(`[{"container_id":"a","port":0}]`, named), loc("body", 0, "port")},
		{"register/port 65536", reg(`[{"container_id":"a","port":65536}]`, named), loc("body", 0, "port")},
		{"register/port -1", reg(`[{"container_id":"a","port":-1}]`, named), loc("body", 0, "port")},
		{"register/port missing", reg(`[{"container_id":"a"}]`, named), loc("body", 0, "port")},
		{"register/port null", reg(`[{"container_id":"a","port":null}]`, named), loc("body", 0, "port")},
		{"register/second item bad port", reg(`[{"container_id":"a","port":80},{"container_id":"b","port":0}]`, named),
			loc("body", 1, "port")},

		// container_id.
		{"register/container_id missing", reg(`[{"port":80}]`, named), loc("body", 0, "container_id")},
		{"register/container_id empty", reg(`[{"container_id":"","port":80}]`, named), loc("body", 0, "container_id")},
		{"register/container_id too long", reg(`[{"container_id":"`+long+`","port":80}]`, named), loc("body", 0, "container_id")},
		{"register/container_id duplicate", reg(`[{"container_id":"a","port":80},{"container_id":"b","port":81},{"container_id":"a","port":82}]`, named),
			loc("body", 2, "container_id")},
		{"register/container_id control char", reg(`[{"container_id":"a\u0001b","port":80}]`, named), loc("body", 0, "container_id")},
		{"register/container_id newline", reg(`[{"container_id":"a\nb","port":80}]`, named), loc("body", 0, "container_id")},
		{"register/container_id DEL", reg("[{\"container_id\":\"a\x7fb\",\"port\":80}]", named), loc("body", 0, "container_id")},
		{"register/container_id invalid utf-8", reg("[{\"container_id\":\"a\xffb\",\"port\":80}]", named), loc("body", 0, "container_id")},

		// name.
		{"register/name control char", reg(ctr(`,"name":"x\ty"`), named), loc("body", 0, "name")},
		{"register/name too long", reg(ctr(`,"name":"`+long+`"`), named), loc("body", 0, "name")},

		// Algorithm and status.
		{"register/unknown algorithm in query", reg(`[]`, query("image_name", "app", "algorithm", "fastest")), loc("query", "algorithm")},
		{"register/unknown algorithm in body", reg(`{"image_name":"app","algorithm":"fastest","containers":[]}`, nil), loc("body", "algorithm")},
		{"register/algorithm wrong case", reg(`[]`, query("image_name", "app", "algorithm", "Round_Robin")), loc("query", "algorithm")},
		{"register/unknown status", reg(ctr(`,"status":"up"`), named), loc("body", 0, "status")},
		{"register/status empty", reg(ctr(`,"status":""`), named), loc("body", 0, "status")},

		// image_id in a container.
		{"register/image_id differs", reg(ctr(`,"image_id":8`), named), loc("body", 0, "image_id")},

		// image_name.
		{"register/image_name missing, array form", reg(`[]`, nil), loc("query", "image_name")},
		{"register/image_name missing, object form", reg(`{"containers":[]}`, nil), loc("query", "image_name")},
		{"register/image_name empty in query", reg(`[]`, query("image_name", "")), loc("query", "image_name")},
		{"register/image_name empty in body", reg(`{"image_name":"","containers":[]}`, nil), loc("query", "image_name")},
		{"register/image_name too long in query", reg(`[]`, query("image_name", long)), loc("query", "image_name")},
		{"register/image_name too long in body", reg(`{"image_name":"`+long+`","containers":[]}`, nil), loc("body", "image_name")},
		{"register/image_name control char in query", reg(`[]`, query("image_name", "a\x00b")), loc("query", "image_name")},
		{"register/image_name control char in body", reg(`{"image_name":"a\u001bb","containers":[]}`, nil), loc("body", "image_name")},
		{"register/query image_name wins and is checked", reg(`{"image_name":"fine","containers":[]}`, query("image_name", "a\rb")),
			loc("query", "image_name")},

		// host.
		{"register/host with scheme", reg(ctr(`,"host":"http://h"`), named), loc("body", 0, "host")},
		{"register/host with port", reg(ctr(`,"host":"h:8080"`), named), loc("body", 0, "host")},
		{"register/host with path", reg(ctr(`,"host":"h/api"`), named), loc("body", 0, "host")},
		{"register/host with userinfo", reg(ctr(`,"host":"user@h"`), named), loc("body", 0, "host")},
		{"register/host with query", reg(ctr(`,"host":"h?x=1"`), named), loc("body", 0, "host")},
		{"register/host bracketed ipv6", reg(ctr(`,"host":"[::1]"`), named), loc("body", 0, "host")},
		{"register/host ipv4 with port", reg(ctr(`,"host":"10.0.0.1:80"`), named), loc("body", 0, "host")},
		{"register/host empty", reg(ctr(`,"host":""`), named), loc("body", 0, "host")},
		{"register/host with space", reg(ctr(`,"host":"my host"`), named), loc("body", 0, "host")},
		{"register/host empty label", reg(ctr(`,"host":"a..b"`), named), loc("body", 0, "host")},
		{"register/host label too long", reg(ctr(`,"host":"`+strings.Repeat("a", 64)+`.com"`), named), loc("body", 0, "host")},
		{"register/host too long", reg(ctr(`,"host":"`+strings.Repeat("a.", 127)+`"`), named), loc("body", 0, "host")},

		// weight.
		{"register/weight -1", reg(ctr(`,"weight":-1`), named), loc("body", 0, "weight")},
		{"register/weight 1001", reg(ctr(`,"weight":1001`), named), loc("body", 0, "weight")},

		// external_port.
		{"register/external_port 0 in query", reg(`[]`, query("image_name", "app", "external_port", "0")), loc("query", "external_port")},
		{"register/external_port 65536 in query", reg(`[]`, query("image_name", "app", "external_port", "65536")), loc("query", "external_port")},
		{"register/external_port -1 in query", reg(`[]`, query("image_name", "app", "external_port", "-1")), loc("query", "external_port")},
		{"register/external_port not a number in query", reg(`[]`, query("image_name", "app", "external_port", "http")), loc("query", "external_port")},
		{"register/external_port empty in query", reg(`[]`, query("image_name", "app", "external_port", "")), loc("query", "external_port")},
		{"register/external_port 0 in body", reg(`{"image_name":"app","external_port":0,"containers":[]}`, nil), loc("body", "external_port")},
		{"register/external_port 70000 in body", reg(`{"image_name":"app","external_port":70000,"containers":[]}`, nil), loc("body", "external_port")},
		{"register/external_port non-numeric string in body", reg(`{"image_name":"app","external_port":"x80","containers":[]}`, nil), loc("body", "external_port")},

		// DecodeContainer (PUT).
		{"put/empty path id", put("", `{"port":80}`), loc("path", "container_id")},
		{"put/path id control char", put("a\x01", `{"port":80}`), loc("path", "container_id")},
		{"put/path id too long", put(long, `{"port":80}`), loc("path", "container_id")},
		{"put/body an array", put("a", `[{"port":80}]`), nil},
		{"put/body empty", put("a", ``), nil},
		{"put/malformed", put("a", `{"port":`), nil}, // a plain "malformed JSON" detail, like register and patch
		{"put/container_id differs", put("a", `{"container_id":"b","port":80}`), loc("body", "container_id")},
		{"put/container_id as number", put("a", `{"container_id":1,"port":80}`), loc("body", "container_id")},
		{"put/port as a non-numeric string", put("a", `{"port":"80a"}`), loc("body", "port")},
		{"put/port missing", put("a", `{}`), loc("body", "port")},
		{"put/port 65536", put("a", `{"port":65536}`), loc("body", "port")},
		{"put/image_id differs", put("a", `{"port":80,"image_id":8}`), loc("body", "image_id")},
		{"put/unknown status", put("a", `{"port":80,"status":"ok"}`), loc("body", "status")},
		{"put/weight 1001", put("a", `{"port":80,"weight":1001}`), loc("body", "weight")},
		{"put/weight as float", put("a", `{"port":80,"weight":0.5}`), loc("body", "weight")},
		{"put/host with scheme", put("a", `{"port":80,"host":"https://h"}`), loc("body", "host")},
		{"put/name control char", put("a", `{"port":80,"name":"\u0007"}`), loc("body", "name")},

		// DecodePatch.
		{"patch/body an array", patch(`[]`), nil},
		{"patch/body empty", patch(``), nil},
		{"patch/malformed", patch(`{"status":`), nil},
		{"patch/nothing to change", patch(`{}`), loc("body")},
		{"patch/only unknown fields", patch(`{"port":80}`), loc("body")},
		{"patch/unknown status", patch(`{"status":"down"}`), loc("body", "status")},
		{"patch/status as number", patch(`{"status":0}`), loc("body", "status")},
		{"patch/weight -1", patch(`{"weight":-1}`), loc("body", "weight")},
		{"patch/weight 1001", patch(`{"weight":1001}`), loc("body", "weight")},
		{"patch/weight as float", patch(`{"weight":2.5}`), loc("body", "weight")},
		{"patch/weight as a non-numeric string", patch(`{"weight":"2x"}`), loc("body", "weight")},

		// ParseImageID.
		{"image_id/empty", imageID(""), loc("path", "image_id")},
		{"image_id/not numeric", imageID("abc"), loc("path", "image_id")},
		{"image_id/zero", imageID("0"), loc("path", "image_id")},
		{"image_id/minus zero", imageID("-0"), loc("path", "image_id")},
		{"image_id/negative", imageID("-1"), loc("path", "image_id")},
		{"image_id/plus sign", imageID("+1"), loc("path", "image_id")},
		{"image_id/beyond int64", imageID("9223372036854775808"), loc("path", "image_id")},
		{"image_id/far beyond int64", imageID("99999999999999999999999"), loc("path", "image_id")},
		{"image_id/decimal", imageID("1.5"), loc("path", "image_id")},
		{"image_id/exponent", imageID("1e3"), loc("path", "image_id")},
		{"image_id/hex", imageID("0x10"), loc("path", "image_id")},
		{"image_id/leading space", imageID(" 1"), loc("path", "image_id")},
		{"image_id/trailing slash", imageID("1/"), loc("path", "image_id")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkInvalid(t, tt.call(), tt.loc)
		})
	}
}

func TestDecodeRegistrationReportsEveryField(t *testing.T) {
	// Several problems at once are all reported, each at its own place.
	body := `[{"port":0},{"container_id":"b","port":80,"weight":-5,"status":"nope"}]`
	_, err := DecodeRegistration(1, []byte(body), nil)
	if KindOf(err) != KindInvalid {
		t.Fatalf("kind = %d, want KindInvalid: %v", KindOf(err), err)
	}
	var got [][]any
	for _, f := range err.(*Error).Fields {
		got = append(got, f.Loc)
	}
	want := [][]any{
		{"query", "image_name"},
		{"body", 0, "container_id"},
		{"body", 0, "port"},
		{"body", 1, "status"},
		{"body", 1, "weight"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("locs = %v, want %v", got, want)
	}
	if s := err.Error(); !strings.Contains(s, "body.0.port: ") || !strings.Contains(s, "query.image_name: ") {
		t.Fatalf("error text %q does not name the fields", s)
	}
}

func TestDecodeRegistrationAccepts(t *testing.T) {
	ctr := func(id string, port int) ContainerSpec {
		return ContainerSpec{ContainerID: id, Port: port, Status: StatusHealthy, Weight: DefaultWeight}
	}
	tests := []struct {
		name  string
		body  string
		query map[string][]string
		want  ServiceSpec
	}{
		{
			name:  "array form",
			body:  `[{"container_id":"a","port":8080},{"container_id":"b","name":"web-2","host":"10.0.0.2","port":8081,"image_id":7,"status":"draining","weight":5}]`,
			query: named,
			want: ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{
				ctr("a", 8080),
				{ContainerID: "b", Name: "web-2", Host: "10.0.0.2", Port: 8081, Status: StatusDraining, Weight: 5},
			}},
		},
		{
			name:  "array form with whitespace before it",
			body:  " \n\t[{\"container_id\":\"a\",\"port\":1}]",
			query: named,
			want:  ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{ctr("a", 1)}},
		},
		{
			name:  "empty array",
			body:  `[]`,
			query: named,
			want:  ServiceSpec{ImageID: 7, ImageName: "app"},
		},
		{
			name: "object form",
			body: `{"image_name":"web","algorithm":"least_connections","external_port":9000,"containers":[{"container_id":"a","port":65535}]}`,
			want: ServiceSpec{ImageID: 7, ImageName: "web", Algorithm: LeastConnections, ExternalPort: 9000,
				Containers: []ContainerSpec{ctr("a", 65535)}},
		},
		{
			name: "object form with empty containers",
			body: `{"image_name":"web","containers":[]}`,
			want: ServiceSpec{ImageID: 7, ImageName: "web"},
		},
		{
			name:  "query wins over the object",
			body:  `{"image_name":"body-name","algorithm":"round_robin","external_port":9000,"containers":[]}`,
			query: query("image_name", "query-name", "algorithm", "least_connections", "external_port", "9001"),
			want:  ServiceSpec{ImageID: 7, ImageName: "query-name", Algorithm: LeastConnections, ExternalPort: 9001},
		},
		{
			name:  "query wins over a bad body field",
			body:  `{"image_name":"body-name","algorithm":"round_robin","containers":[]}`,
			query: query("image_name", "q", "algorithm", "round_robin"),
			want:  ServiceSpec{ImageID: 7, ImageName: "q", Algorithm: RoundRobin},
		},
		{
			name:  "least_conn alias in the query",
			body:  `[]`,
			query: query("image_name", "app", "algorithm", "least_conn"),
			want:  ServiceSpec{ImageID: 7, ImageName: "app", Algorithm: LeastConnections},
		},
		{
			name: "least_conn alias in the body",
			body: `{"image_name":"app","algorithm":"least_conn","containers":[]}`,
			want: ServiceSpec{ImageID: 7, ImageName: "app", Algorithm: LeastConnections},
		},
		{
			name:  "empty algorithm means the default",
			body:  `[]`,
			query: query("image_name", "app", "algorithm", ""),
			want:  ServiceSpec{ImageID: 7, ImageName: "app"},
		},
		{
			name:  "external_port bounds in the query",
			body:  `[]`,
			query: query("image_name", "app", "external_port", "65535"),
			want:  ServiceSpec{ImageID: 7, ImageName: "app", ExternalPort: 65535},
		},
		{
			name:  "defaults: status healthy, weight 1, empty host",
			body:  `[{"container_id":"a","port":80}]`,
			query: named,
			want:  ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{ctr("a", 80)}},
		},
		{
			name:  "null fields are defaults",
			body:  `[{"container_id":"a","port":80,"host":null,"status":null,"weight":null,"image_id":null}]`,
			query: named,
			want:  ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{ctr("a", 80)}},
		},
		{
			name:  "weight 0 and 1000, every status, hosts",
			body:  `[{"container_id":"a","port":1,"weight":0,"status":"unhealthy","host":"::1"},{"container_id":"b","port":2,"weight":1000,"status":"starting","host":"my-host_1.internal"},{"container_id":"c","port":3,"status":"healthy","host":"192.168.0.1"}]`,
			query: named,
			want: ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{
				{ContainerID: "a", Host: "::1", Port: 1, Status: StatusUnhealthy, Weight: 0},
				{ContainerID: "b", Host: "my-host_1.internal", Port: 2, Status: StatusStarting, Weight: 1000},
				{ContainerID: "c", Host: "192.168.0.1", Port: 3, Status: StatusHealthy, Weight: 1},
			}},
		},
		{
			name:  "unicode names and 255-character ids",
			body:  `[{"container_id":"` + strings.Repeat("é", 127) + `x","name":"wéb ✓","port":80}]`,
			query: query("image_name", "ïmage/name:tag"),
			want: ServiceSpec{ImageID: 7, ImageName: "ïmage/name:tag", Containers: []ContainerSpec{
				{ContainerID: strings.Repeat("é", 127) + "x", Name: "wéb ✓", Port: 80, Status: StatusHealthy, Weight: 1},
			}},
		},
		{
			name:  "unknown fields are ignored",
			body:  `[{"container_id":"a","port":80,"shard":"eu","extra":{"x":1}}]`,
			query: named,
			want:  ServiceSpec{ImageID: 7, ImageName: "app", Containers: []ContainerSpec{ctr("a", 80)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRegistration(7, []byte(tt.body), tt.query)
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("spec =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestDecodeContainerAccepts(t *testing.T) {
	tests := []struct {
		name string
		id   string
		body string
		want ContainerSpec
	}{
		{"id from the path", "web-1", `{"port":80}`,
			ContainerSpec{ContainerID: "web-1", Port: 80, Status: StatusHealthy, Weight: 1}},
		{"same id in the body", "web-1", `{"container_id":"web-1","port":80,"host":"h","weight":0,"status":"draining","image_id":7}`,
			ContainerSpec{ContainerID: "web-1", Host: "h", Port: 80, Status: StatusDraining, Weight: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeContainer(7, tt.id, []byte(tt.body))
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if got != tt.want {
				t.Fatalf("spec = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodePatchAccepts(t *testing.T) {
	ptr := func(s Status) *Status { return &s }
	iptr := func(i int) *int { return &i }
	tests := []struct {
		name string
		body string
		want ContainerPatch
	}{
		{"status", `{"status":"draining"}`, ContainerPatch{Status: ptr(StatusDraining)}},
		{"weight", `{"weight":5}`, ContainerPatch{Weight: iptr(5)}},
		{"weight 0", `{"weight":0}`, ContainerPatch{Weight: iptr(0)}},
		{"both", `{"status":"unhealthy","weight":1000}`, ContainerPatch{Status: ptr(StatusUnhealthy), Weight: iptr(1000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodePatch([]byte(tt.body))
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("patch = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseImageIDAccepts(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{"1", 1},
		{"42", 42},
		{"007", 7},
		{"9223372036854775807", 9223372036854775807},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseImageID(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("ParseImageID(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseAlgorithmAndStatus(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Algorithm
		ok   bool
	}{
		{"", "", true},
		{"round_robin", RoundRobin, true},
		{"least_connections", LeastConnections, true},
		{"least_conn", LeastConnections, true},
		{"random", Random, true}, {"fastest", "", false},
		{"ROUND_ROBIN", "", false},
	} {
		if got, ok := ParseAlgorithm(tt.in); got != tt.want || ok != tt.ok {
			t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	for _, s := range []Status{StatusHealthy, StatusUnhealthy, StatusStarting, StatusDraining} {
		if got, ok := ParseStatus(string(s)); got != s || !ok {
			t.Errorf("ParseStatus(%q) = %q, %v", s, got, ok)
		}
	}
	for _, s := range []string{"", "Healthy", "up", "down"} {
		if _, ok := ParseStatus(s); ok {
			t.Errorf("ParseStatus(%q) accepted", s)
		}
	}
}

// TestDecodeLaxNumbers: numbers are read as the original's Pydantic models
// read them (lax mode): numeric strings and integral floats are integers;
// the usage fields take numbers, numeric strings and null.
func TestDecodeLaxNumbers(t *testing.T) {
	tests := []struct {
		name string
		body string
		port int
		cpu  *float64
	}{
		{"integer", `[{"container_id":"a","port":4001}]`, 4001, nil},
		{"numeric string", `[{"container_id":"a","port":"4001"}]`, 4001, nil},
		{"integral float", `[{"container_id":"a","port":4001.0}]`, 4001, nil},
		{"string with spaces", `[{"container_id":"a","port":" 4001 "}]`, 4001, nil},
		{"exponent", `[{"container_id":"a","port":4.001e3}]`, 4001, nil},
		{"weight and image_id as strings", `[{"container_id":"a","port":4001,"weight":"2","image_id":"7"}]`, 4001, nil},
		{"usage as a number", `[{"container_id":"a","port":4001,"cpu_usage":42.5}]`, 4001, ptr(42.5)},
		{"usage as a string", `[{"container_id":"a","port":4001,"cpu_usage":"42.5"}]`, 4001, ptr(42.5)},
		{"usage null", `[{"container_id":"a","port":4001,"cpu_usage":null}]`, 4001, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := DecodeRegistration(7, []byte(tt.body), map[string][]string{"image_name": {"app"}})
			if err != nil {
				t.Fatal(err)
			}
			c := spec.Containers[0]
			if c.Port != tt.port || (c.CPUUsage == nil) != (tt.cpu == nil) || (c.CPUUsage != nil && *c.CPUUsage != *tt.cpu) {
				t.Fatalf("decoded port %d, cpu_usage %v", c.Port, c.CPUUsage)
			}
		})
	}
	rejects := []struct{ name, body, typ string }{
		{"fraction", `[{"container_id":"a","port":4001.5}]`, "int_from_float"},
		{"word", `[{"container_id":"a","port":"abc"}]`, "int_parsing"},
		{"boolean", `[{"container_id":"a","port":true}]`, "int_type"},
		{"null for a required int", `[{"container_id":"a","port":null}]`, "int_type"},
		{"usage word", `[{"container_id":"a","port":1,"memory_usage":"lots"}]`, "float_parsing"},
		{"negative usage", `[{"container_id":"a","port":1,"disk_usage":-1}]`, "value_error"},
	}
	for _, tt := range rejects {
		t.Run("rejects "+tt.name, func(t *testing.T) {
			_, err := DecodeRegistration(7, []byte(tt.body), map[string][]string{"image_name": {"app"}})
			var re *Error
			if !errors.As(err, &re) || len(re.Fields) != 1 || re.Fields[0].Type != tt.typ || re.Fields[0].Loc[0] != "body" || re.Fields[0].Loc[1] != 0 {
				t.Fatalf("got %v, want one %s error at body.0", err, tt.typ)
			}
		})
	}
	p, err := DecodePatch([]byte(`{"cpu_usage":"7","memory_usage":null}`))
	if err != nil || p.Usage[0] == nil || **p.Usage[0] != 7 || p.Usage[1] == nil || *p.Usage[1] != nil || p.Usage[2] != nil {
		t.Fatalf("patch of usage: %+v, %v", p, err)
	}
}

func ptr(f float64) *float64 { return &f }
