package registry

import (
	"fmt"
	"strings"
	"unicode"
)

// The rules every container and service obeys, written once: the API
// decoder, the JSON configuration, the Caddyfile and the restore of stored
// state all call Check (or, for one Caddyfile token, the rule it needs), so
// what one accepts the others accept.

// Check reports what is wrong with the container, one FieldError per field
// at fault, located by the field's JSON name; nil when it is valid.
func (c ContainerSpec) Check() []FieldError {
	var fe fieldErrors
	if c.ContainerID == "" {
		fe.add("missing", fmt.Sprintf("container_id is required (1-%d characters)", MaxIDLength), "container_id")
	} else {
		checkText(&fe, c.ContainerID, MaxIDLength, "container_id", "container_id")
	}
	checkText(&fe, c.Name, MaxNameLength, "name", "name")
	if c.Host != "" {
		if msg := CheckHost(c.Host); msg != "" {
			fe.add("value_error", msg, "host")
		}
	}
	if !ValidPort(int64(c.Port)) {
		fe.add("value_error", portMsg("port", int64(c.Port)), "port")
	}
	if _, ok := ParseStatus(string(c.Status)); !ok {
		fe.add("enum", unknownStatus(string(c.Status)), "status")
	}
	if msg := CheckWeight(int64(c.Weight)); msg != "" {
		fe.add("value_error", msg, "weight")
	}
	checkText(&fe, c.Zone, MaxNameLength, "zone", "zone")
	for _, u := range []struct {
		name string
		v    *float64
	}{{"cpu_usage", c.CPUUsage}, {"memory_usage", c.MemoryUsage}, {"disk_usage", c.DiskUsage}} {
		if u.v != nil && !validUsage(*u.v) {
			fe.add("value_error", fmt.Sprintf("%s must be a finite number of at least 0, got %v", u.name, *u.v), u.name)
		}
	}
	return fe
}

// Check reports what is wrong with the service and its containers (located
// as ["containers", i, field]); nil when it is valid. The options are
// normalised for the algorithm, as a registration does.
func (s *ServiceSpec) Check() []FieldError {
	var fe fieldErrors
	if s.ImageID <= 0 {
		fe.add("value_error", fmt.Sprintf("image_id must be a positive integer, got %d", s.ImageID), "image_id")
	}
	if s.ImageName == "" {
		fe.add("missing", "image_name is required, 1-255 characters", "image_name")
	} else {
		checkText(&fe, s.ImageName, MaxNameLength, "image_name", "image_name")
	}
	if _, ok := ParseAlgorithm(string(s.Algorithm)); !ok {
		fe.add("enum", unknownAlgorithm(string(s.Algorithm)), "algorithm")
	}
	if s.ExternalPort != 0 && !ValidPort(int64(s.ExternalPort)) {
		fe.add("value_error", portMsg("external_port", int64(s.ExternalPort)), "external_port")
	}
	s.Options.check(&fe, s.Algorithm, nil)
	seen := make(map[string]int, len(s.Containers))
	for i, c := range s.Containers {
		for _, f := range c.Check() {
			f.Loc = append([]any{"containers", i}, f.Loc...)
			fe = append(fe, f)
		}
		if j, dup := seen[c.ContainerID]; dup && c.ContainerID != "" {
			fe.add("value_error", fmt.Sprintf("duplicate container_id %q (also at index %d)", c.ContainerID, j), "containers", i, "container_id")
		}
		seen[c.ContainerID] = i
	}
	return fe
}

// FieldErrors joins field errors into one line for errors that are not
// answered field by field (configuration, stored state): "loc: msg; ...".
func FieldErrors(fes []FieldError) error {
	if len(fes) == 0 {
		return nil
	}
	parts := make([]string, len(fes))
	for i, f := range fes {
		loc := make([]string, len(f.Loc))
		for j, l := range f.Loc {
			loc[j] = fmt.Sprint(l)
		}
		parts[i] = f.Msg
		if len(loc) > 0 && !strings.HasPrefix(f.Msg, fmt.Sprint(f.Loc[len(f.Loc)-1])) {
			parts[i] = strings.Join(loc, ".") + ": " + f.Msg
		}
	}
	return fmt.Errorf("%s", strings.Join(parts, "; "))
}

// ValidText reports whether s fits in max bytes and has no control
// character or invalid UTF-8: the rule of every string field (ids, names,
// zones).
func ValidText(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

// CheckWeight returns why w is not a weight, or "".
func CheckWeight(w int64) string {
	if w < 0 || w > MaxWeight {
		return fmt.Sprintf("weight must be from 0 to %d, got %d", MaxWeight, w)
	}
	return ""
}
