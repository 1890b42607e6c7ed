package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"reflect"
	"strconv"
	"strings"
	"unicode"
)

// containerInput is the wire form of a container in a request. Pointers tell
// an absent field from a zero one.
type containerInput struct {
	ContainerID *string `json:"container_id"`
	Name        *string `json:"name"`
	Host        *string `json:"host"`
	Port        laxInt  `json:"port"`
	ImageID     laxInt  `json:"image_id"`
	Status      *string `json:"status"`
	Weight      laxInt  `json:"weight"`
	Zone        *string `json:"zone"`
	usageInput
}

// usageInput is what the orchestrator pushes of a container's resource use.
type usageInput struct {
	CPUUsage    laxFloat `json:"cpu_usage"`
	MemoryUsage laxFloat `json:"memory_usage"`
	DiskUsage   laxFloat `json:"disk_usage"`
}

// fields lists the usage inputs with their JSON names.
func (u *usageInput) fields() [3]struct {
	name string
	in   *laxFloat
} {
	return [3]struct {
		name string
		in   *laxFloat
	}{{"cpu_usage", &u.CPUUsage}, {"memory_usage", &u.MemoryUsage}, {"disk_usage", &u.DiskUsage}}
}

// registrationInput is the object form of a registration body.
type registrationInput struct {
	ImageName    *string           `json:"image_name"`
	Algorithm    *string           `json:"algorithm"`
	ExternalPort laxInt            `json:"external_port"`
	Containers   []json.RawMessage `json:"containers"`
	ServiceOptions
}

type patchInput struct {
	Status *string `json:"status"`
	Weight laxInt  `json:"weight"`
	usageInput
}

// laxInt is an integer field decoded as the original service's Pydantic
// models did (lax mode): a JSON integer, a number with no fraction (4001.0)
// or a string holding an integer ("4001"). Decoding never fails, so every
// field is checked and each error names its field; check reports them.
type laxInt struct {
	set  bool   // the field is present
	null bool   // its value is null
	v    int64  // the value, when bad is ""
	bad  string // why it is not an integer: the Pydantic error type
	raw  string // the JSON as sent, for messages
}

func (l *laxInt) UnmarshalJSON(b []byte) error {
	*l = laxInt{set: true, raw: string(b)}
	switch b[0] {
	case 'n':
		l.null = true
	case '"':
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			l.bad = "int_parsing"
			return nil
		}
		l.v, l.bad = parseLaxInt(strings.TrimSpace(str), "int_parsing")
	case 't', 'f', '[', '{':
		l.bad = "int_type"
	default:
		l.v, l.bad = parseLaxInt(string(b), "int_from_float")
	}
	return nil
}

// parseLaxInt parses an integer, or a number with no fractional part;
// fraction is the error type of a number that has one.
func parseLaxInt(s, fraction string) (int64, string) {
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, ""
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, "int_parsing"
	case err != nil || f >= 1<<63 || f < -(1<<63):
		return 0, "int_parsing" // out of range: no integer here
	case f != math.Trunc(f):
		return 0, fraction
	}
	return int64(f), ""
}

// check adds what is wrong with the field to fe and returns its value and
// whether it has one. A missing or null optional field has none; a missing
// or null required field is an error.
func (l *laxInt) check(fe *fieldErrors, field string, required bool, loc ...any) (int64, bool) {
	switch {
	case !l.set || (l.null && !required):
		if required {
			fe.add("missing", fmt.Sprintf("%s is required", field), loc...)
		}
		return 0, false
	case l.null:
		fe.add("int_type", fmt.Sprintf("%s: input should be a valid integer, got null", field), loc...)
		return 0, false
	case l.bad == "int_from_float":
		fe.add(l.bad, fmt.Sprintf("%s: input should be a valid integer, got a number with a fractional part: %s", field, l.raw), loc...)
		return 0, false
	case l.bad != "":
		fe.add(l.bad, fmt.Sprintf("%s: input should be a valid integer, got %s", field, l.raw), loc...)
		return 0, false
	}
	return l.v, true
}

// laxFloat is a number field decoded in Pydantic's lax mode: a JSON number
// or a string holding one; null is a value of its own (none).
type laxFloat struct {
	set  bool
	null bool
	v    float64
	bad  string
	raw  string
}

func (l *laxFloat) UnmarshalJSON(b []byte) error {
	*l = laxFloat{set: true, raw: string(b)}
	s := string(b)
	switch b[0] {
	case 'n':
		l.null = true
		return nil
	case '"':
		if err := json.Unmarshal(b, &s); err != nil {
			l.bad = "float_parsing"
			return nil
		}
		s = strings.TrimSpace(s)
	case 't', 'f', '[', '{':
		l.bad = "float_type"
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		l.bad = "float_parsing"
	}
	l.v = v
	return nil
}

// check adds what is wrong with the usage field to fe and returns the value
// to store (nil for null) and whether the field was given.
func (l *laxFloat) check(fe *fieldErrors, field string, loc ...any) (*float64, bool) {
	switch {
	case !l.set:
		return nil, false
	case l.null:
		return nil, true
	case l.bad != "":
		fe.add(l.bad, fmt.Sprintf("%s: input should be a valid number, got %s", field, l.raw), loc...)
		return nil, false
	case !validUsage(l.v):
		fe.add("value_error", fmt.Sprintf("%s must be a finite number of at least 0, got %s", field, l.raw), loc...)
		return nil, false
	}
	v := l.v
	return &v, true
}

// validUsage reports whether v may be stored as a usage figure.
func validUsage(v float64) bool { return v >= 0 && !math.IsInf(v, 0) && !math.IsNaN(v) }

// ParseImageID parses an image_id from the path: a positive decimal integer
// that fits in int64.
func ParseImageID(s string) (int64, error) {
	return parseImageIDAt(s, "path")
}

// ParseImageIDQuery parses the ?image_id= filter of a query.
func ParseImageIDQuery(s string) (int64, error) {
	return parseImageIDAt(s, "query")
}

func parseImageIDAt(s, where string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 || s[0] == '+' {
		return 0, &Error{Kind: KindInvalid, Fields: []FieldError{{
			Loc: []any{where, "image_id"}, Type: "int_parsing",
			Msg: fmt.Sprintf("image_id must be a positive integer, got %q", s),
		}}}
	}
	return id, nil
}

// DecodeRegistration decodes and validates the body and query of a
// registration of imageID. The body is a JSON array of containers or an object
// with image_name, algorithm, external_port and containers; query parameters
// win over the object's fields.
func DecodeRegistration(imageID int64, body []byte, query map[string][]string) (ServiceSpec, error) {
	spec := ServiceSpec{ImageID: imageID}
	var fe fieldErrors
	var items []json.RawMessage
	var itemLoc []any                       // location prefix of the containers
	nameLoc := []any{"query", "image_name"} // where the image_name in use came from

	switch firstByte(body) {
	case '[':
		if err := json.Unmarshal(body, &items); err != nil {
			return spec, jsonError(err)
		}
		itemLoc = []any{"body"}
	case '{':
		var in registrationInput
		if err := json.Unmarshal(body, &in); err != nil {
			return spec, jsonError(err)
		}
		if in.ImageName != nil {
			spec.ImageName = *in.ImageName
			nameLoc = []any{"body", "image_name"}
		}
		if in.Algorithm != nil {
			alg, ok := ParseAlgorithm(*in.Algorithm)
			if !ok {
				fe.add("enum", unknownAlgorithm(*in.Algorithm), "body", "algorithm")
			}
			spec.Algorithm = alg
		}
		if p, ok := in.ExternalPort.check(&fe, "external_port", false, "body", "external_port"); ok {
			if !ValidPort(p) {
				fe.add("value_error", portMsg("external_port", p), "body", "external_port")
			}
			spec.ExternalPort = int(p)
		}
		if in.Containers == nil {
			fe.add("missing", "field required: containers (a list of containers, may be empty)", "body", "containers")
		}
		items = in.Containers
		itemLoc = []any{"body", "containers"}
		spec.Options = in.ServiceOptions
	default:
		return spec, invalid("request body must be a JSON array of containers or an object with image_name and containers")
	}

	if v, ok := queryValue(query, "image_name"); ok {
		spec.ImageName = v
		nameLoc = []any{"query", "image_name"}
	}
	if v, ok := queryValue(query, "algorithm"); ok {
		alg, ok := ParseAlgorithm(v)
		if !ok {
			fe.add("enum", unknownAlgorithm(v), "query", "algorithm")
		}
		spec.Algorithm = alg
	}
	if v, ok := queryValue(query, "external_port"); ok {
		p, err := strconv.ParseInt(v, 10, 64)
		if err != nil || !ValidPort(p) {
			fe.add("value_error", fmt.Sprintf("external_port must be an integer from 1 to 65535, got %q", v), "query", "external_port")
		}
		spec.ExternalPort = int(p)
	}
	spec.Options.check(&fe, spec.Algorithm, []any{"body"})
	if spec.ImageName == "" {
		fe.add("missing", "image_name is required (query parameter ?image_name=NAME or body field), 1-255 characters", "query", "image_name")
	} else {
		checkText(&fe, spec.ImageName, MaxNameLength, "image_name", nameLoc...)
	}

	seen := make(map[string]int, len(items))
	for i, raw := range items {
		loc := append(append([]any{}, itemLoc...), i)
		c, cfe := decodeContainer(raw, imageID, loc, "")
		fe = append(fe, cfe...)
		if len(cfe) > 0 {
			continue
		}
		if j, dup := seen[c.ContainerID]; dup {
			fe.add("value_error", fmt.Sprintf("duplicate container_id %q (also at index %d)", c.ContainerID, j),
				append(loc, "container_id")...)
			continue
		}
		seen[c.ContainerID] = i
		spec.Containers = append(spec.Containers, c)
	}
	return spec, fe.err()
}

// DecodeContainer decodes and validates the body of a PUT of one container.
// containerID is the path's id; the body's container_id, when present, must
// equal it.
func DecodeContainer(imageID int64, containerID string, body []byte) (ContainerSpec, error) {
	var fe fieldErrors
	checkText(&fe, containerID, MaxIDLength, "container_id", "path", "container_id")
	if containerID == "" {
		fe.add("missing", "container_id must not be empty", "path", "container_id")
	}
	if firstByte(body) != '{' {
		return ContainerSpec{}, invalid("request body must be a JSON object describing the container")
	}
	if !json.Valid(body) {
		var v any
		return ContainerSpec{}, jsonError(json.Unmarshal(body, &v)) // the same message as a registration's
	}
	if len(fe) > 0 {
		return ContainerSpec{}, fe.err()
	}
	c, cfe := decodeContainer(body, imageID, []any{"body"}, containerID)
	return c, cfe.err()
}

// DecodePatch decodes and validates the body of a PATCH of one container.
func DecodePatch(body []byte) (ContainerPatch, error) {
	var p ContainerPatch
	if firstByte(body) != '{' {
		return p, invalid("request body must be a JSON object such as {\"status\": \"draining\"} or {\"weight\": 5}")
	}
	var in patchInput
	if err := json.Unmarshal(body, &in); err != nil {
		return p, jsonError(err)
	}
	var fe fieldErrors
	if in.Status == nil && (!in.Weight.set || in.Weight.null) && !in.CPUUsage.set && !in.MemoryUsage.set && !in.DiskUsage.set {
		fe.add("missing", "nothing to change: give status, weight, cpu_usage, memory_usage and/or disk_usage", "body")
	}
	if in.Status != nil {
		s, ok := ParseStatus(*in.Status)
		if !ok {
			fe.add("enum", unknownStatus(*in.Status), "body", "status")
		}
		p.Status = &s
	}
	if w, ok := in.Weight.check(&fe, "weight", false, "body", "weight"); ok {
		if w < 0 || w > MaxWeight {
			fe.add("value_error", fmt.Sprintf("weight must be from 0 to %d, got %d", MaxWeight, w), "body", "weight")
		}
		wi := int(w)
		p.Weight = &wi
	}
	for i, u := range in.usageInput.fields() {
		if v, ok := u.in.check(&fe, u.name, "body", u.name); ok {
			p.Usage[i] = &v
		}
	}
	return p, fe.err()
}

// decodeContainer decodes one container; pathID, when not empty, is the
// container_id given by the path, which the body may omit but not contradict.
func decodeContainer(raw json.RawMessage, imageID int64, loc []any, pathID string) (ContainerSpec, fieldErrors) {
	var fe fieldErrors
	at := func(field string) []any { return append(append([]any{}, loc...), field) }
	var in containerInput
	if firstByte(raw) != '{' {
		fe.add("model_type", "each container must be a JSON object", loc...)
		return ContainerSpec{}, fe
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			fe.add("type_error", typeMsg(te), at(te.Field)...)
		} else {
			fe.add("json_invalid", err.Error(), loc...)
		}
		return ContainerSpec{}, fe
	}
	// Here the JSON is read into a ContainerSpec; what its values may be is
	// ContainerSpec.Check's, below.
	c := ContainerSpec{Status: StatusHealthy, Weight: DefaultWeight}
	if pathID != "" {
		if in.ContainerID != nil && *in.ContainerID != pathID {
			fe.add("value_error", fmt.Sprintf("container_id %q in the body differs from %q in the path", *in.ContainerID, pathID),
				at("container_id")...)
		}
		in.ContainerID = &pathID
	}
	if in.ContainerID != nil {
		c.ContainerID = *in.ContainerID
	}
	if in.Name != nil {
		c.Name = *in.Name
	}
	if in.Host != nil {
		c.Host = *in.Host
		if c.Host == "" {
			fe.add("value_error", CheckHost(c.Host), at("host")...) // Check takes "" as "the default host"
		}
	}
	portGiven := false
	if p, ok := in.Port.check(&fe, "port", true, at("port")...); ok {
		c.Port, portGiven = int(max(min(p, 1<<31), -1)), true
	}
	if id, ok := in.ImageID.check(&fe, "image_id", false, at("image_id")...); ok && id != imageID {
		fe.add("value_error", fmt.Sprintf("image_id %d differs from image_id %d in the path", id, imageID), at("image_id")...)
	}
	if in.Status != nil {
		c.Status = Status(*in.Status)
	}
	if w, ok := in.Weight.check(&fe, "weight", false, at("weight")...); ok {
		c.Weight = int(max(min(w, 1<<31), -1))
	}
	if in.Zone != nil {
		c.Zone = *in.Zone
	}
	usage := [3]**float64{&c.CPUUsage, &c.MemoryUsage, &c.DiskUsage}
	for i, u := range in.usageInput.fields() {
		if v, ok := u.in.check(&fe, u.name, at(u.name)...); ok {
			*usage[i] = v
		}
	}
	for _, f := range c.Check() {
		l := append(append([]any{}, loc...), f.Loc...)
		if (f.Loc[0] == "port" && !portGiven) || fe.has(l) {
			continue // already said, as a missing field or one of the wrong type
		}
		fe = append(fe, FieldError{Loc: l, Msg: f.Msg, Type: f.Type})
	}
	return c, fe
}

// CheckHost returns why host is not a bare hostname or IP address, or "".
func CheckHost(host string) string {
	if host == "" {
		return "host must not be empty (omit it to use the default host)"
	}
	if len(host) > MaxHostLength {
		return fmt.Sprintf("host is longer than %d characters", MaxHostLength)
	}
	if ip := net.ParseIP(host); ip != nil {
		return ""
	}
	if strings.Contains(host, "://") || strings.ContainsAny(host, "/?#@[]:") {
		return fmt.Sprintf("host %q must be a bare hostname or IP address: no scheme, port, path or user", host)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Sprintf("host %q is not a valid hostname (empty or over-long label)", host)
		}
		for _, r := range label {
			if !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return fmt.Sprintf("host %q is not a valid hostname (character %q)", host, r)
			}
		}
	}
	return ""
}

func checkText(fe *fieldErrors, s string, max int, field string, loc ...any) {
	if len(s) > max {
		fe.add("string_too_long", fmt.Sprintf("%s is longer than %d characters", field, max), loc...)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			fe.add("value_error", fmt.Sprintf("%s contains a control character or invalid UTF-8", field), loc...)
			return
		}
	}
}

func portMsg(field string, p int64) string {
	return fmt.Sprintf("%s must be from 1 to 65535, got %d", field, p)
}

func unknownAlgorithm(name string) string {
	return fmt.Sprintf("unknown algorithm %q: use %s", name, AlgorithmNames)
}

func unknownStatus(name string) string {
	return fmt.Sprintf("unknown status %q: use %s", name, StatusNames)
}

func typeMsg(te *json.UnmarshalTypeError) string {
	field := jsonPath(te.Field)
	if field == "" {
		field = "value"
	}
	return fmt.Sprintf("%s: expected %s, got JSON %s", field, jsonKind(te.Type), te.Value)
}

// jsonKind names a Go type the way a JSON user thinks of it.
func jsonKind(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return `a duration such as "30s" or a number of seconds`
	}
	if t == sizeType {
		return `a size such as "64KiB" or a number of bytes`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return jsonKind(t.Elem())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "an object"
}

// jsonError turns a decoding error into a 422 that says where it went wrong.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		loc := []any{"body"}
		for _, part := range strings.Split(jsonPath(te.Field), ".") {
			if part != "" {
				loc = append(loc, part)
			}
		}
		return &Error{Kind: KindInvalid, Fields: []FieldError{{Loc: loc, Msg: typeMsg(te), Type: "type_error"}}}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return invalid("malformed JSON at byte %d: %v", se.Offset, err)
	}
	return invalid("malformed JSON: %v", err)
}

// jsonPath drops from a decoder's field path the names of embedded Go
// structs (ServiceOptions), which are not part of the JSON.
func jsonPath(field string) string {
	parts := strings.Split(field, ".")
	kept := parts[:0]
	for _, p := range parts {
		if p != "" && !unicode.IsUpper(rune(p[0])) {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ".")
}

func firstByte(b []byte) byte {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func queryValue(q map[string][]string, key string) (string, bool) {
	vs, ok := q[key]
	if !ok || len(vs) == 0 {
		return "", false
	}
	return vs[0], true
}
