package registry

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestDecodeRolloutDefaults(t *testing.T) {
	ro, err := DecodeRollout([]byte(`{"canary_image_id": 2, "steps": [5, 20.004, 50, 100], "interval": "1m"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Rollout{CanaryImageID: 2, Steps: []float64{5, 20, 50, 100}, Interval: Duration(time.Minute),
		MinRequests: 50, MaxErrorRate: 0.01, MaxP99Ratio: 1.5}
	if !reflect.DeepEqual(ro, want) {
		t.Fatalf("decoded %+v, want %+v", ro, want)
	}
	ro, err = DecodeRollout([]byte(`{"canary_image_id": "3", "steps": [100], "interval": 2, "min_requests": 1, "max_error_rate": 0, "max_p99_ratio": 0, "promote_url": "http://127.0.0.1:9/hook"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ro.MaxP99Ratio != 0 || ro.MaxErrorRate != 0 || ro.MinRequests != 1 || time.Duration(ro.Interval) != 2*time.Second {
		t.Fatalf("explicit values not kept: %+v", ro)
	}
}

func TestDecodeRolloutRejects(t *testing.T) {
	tests := []struct {
		name, body string
		loc        string
	}{
		{"no canary", `{"steps": [100], "interval": "1s"}`, "[body canary_image_id]"},
		{"canary not an integer", `{"canary_image_id": "x", "steps": [100], "interval": "1s"}`, "[body canary_image_id]"},
		{"canary zero", `{"canary_image_id": 0, "steps": [100], "interval": "1s"}`, "[body canary_image_id]"},
		{"no steps", `{"canary_image_id": 2, "interval": "1s"}`, "[body steps]"},
		{"empty steps", `{"canary_image_id": 2, "steps": [], "interval": "1s"}`, "[body steps]"},
		{"steps not rising", `{"canary_image_id": 2, "steps": [10, 10, 100], "interval": "1s"}`, "[body steps 1]"},
		{"steps falling", `{"canary_image_id": 2, "steps": [50, 20, 100], "interval": "1s"}`, "[body steps 1]"},
		{"steps not ending at 100", `{"canary_image_id": 2, "steps": [10, 50], "interval": "1s"}`, "[body steps 1]"},
		{"step over 100", `{"canary_image_id": 2, "steps": [10, 120], "interval": "1s"}`, "[body steps 1]"},
		{"step zero", `{"canary_image_id": 2, "steps": [0, 100], "interval": "1s"}`, "[body steps 0]"},
		{"steps not numbers", `{"canary_image_id": 2, "steps": ["a"], "interval": "1s"}`, "[body steps]"},
		{"no interval", `{"canary_image_id": 2, "steps": [100]}`, "[body interval]"},
		{"interval too short", `{"canary_image_id": 2, "steps": [100], "interval": "500ms"}`, "[body interval]"},
		{"interval too long", `{"canary_image_id": 2, "steps": [100], "interval": "25h"}`, "[body interval]"},
		{"min_requests zero", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "min_requests": 0}`, "[body min_requests]"},
		{"max_error_rate above 1", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "max_error_rate": 1.5}`, "[body max_error_rate]"},
		{"max_error_rate negative", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "max_error_rate": -0.1}`, "[body max_error_rate]"},
		{"max_p99_ratio below 1", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "max_p99_ratio": 0.5}`, "[body max_p99_ratio]"},
		{"max_p99_ratio too large", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "max_p99_ratio": 1000}`, "[body max_p99_ratio]"},
		{"promote_url not http", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "promote_url": "ftp://x/"}`, "[body promote_url]"},
		{"promote_url relative", `{"canary_image_id": 2, "steps": [100], "interval": "1s", "promote_url": "/hook"}`, "[body promote_url]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRollout([]byte(tt.body))
			fields := fieldsOf(t, err)
			for _, f := range fields {
				if fmt.Sprint(f.Loc) == tt.loc {
					return
				}
			}
			t.Fatalf("errors %+v, want one at %s", fields, tt.loc)
		})
	}
}

// rolloutOf decodes a rollout body that must be valid.
func rolloutOf(t *testing.T, body string) Rollout {
	t.Helper()
	ro, err := DecodeRollout([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return ro
}

func TestStartRolloutRefusals(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 1, ServiceOptions{})
	registerSplit(t, r, 2, ServiceOptions{})
	registerSplit(t, r, 3, ServiceOptions{Split: []SplitTarget{{ImageID: 2, Percent: pct(10)}}})
	down := svcSpec(4, ctr("c", 9004))
	down.Containers[0].Status = StatusUnhealthy
	mustRegister(t, r, down)
	registerSplit(t, r, 5, ServiceOptions{Split: []SplitTarget{{ImageID: 1, Percent: pct(10)}}})
	body := `{"canary_image_id": %d, "steps": [10, 100], "interval": "1s"}`
	tests := []struct {
		name   string
		image  int64
		canary int64
		kind   Kind
		loc    string
	}{
		{"unknown image", 9, 2, KindNotFound, ""},
		{"unknown canary", 1, 9, KindInvalid, "[body canary_image_id]"},
		{"the image itself", 1, 1, KindInvalid, "[body canary_image_id]"},
		{"canary without an available container", 1, 4, KindInvalid, "[body canary_image_id]"},
		{"canary splitting back", 1, 5, KindInvalid, "[body canary_image_id]"},
		{"split set by hand", 3, 1, KindInvalid, "[path image_id]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.Lookup(tt.image)
			_, err := r.StartRollout(tt.image, rolloutOf(t, fmt.Sprintf(body, tt.canary)))
			wantKind(t, err, tt.kind)
			if tt.loc != "" {
				if got := fmt.Sprint(fieldsOf(t, err)[0].Loc); got != tt.loc {
					t.Fatalf("error at %s, want %s: %v", got, tt.loc, err)
				}
			}
			if r.Lookup(tt.image) != before {
				t.Fatal("a refused rollout changed the service")
			}
		})
	}
	t.Run("a second rollout", func(t *testing.T) {
		if _, err := r.StartRollout(1, rolloutOf(t, fmt.Sprintf(body, 2))); err != nil {
			t.Fatal(err)
		}
		before := r.Lookup(1)
		_, err := r.StartRollout(1, rolloutOf(t, fmt.Sprintf(body, 2)))
		wantKind(t, err, KindConflict)
		if r.Lookup(1) != before {
			t.Fatal("a refused rollout changed the service")
		}
	})
}

func TestRolloutDrivesTheSplit(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 1, ServiceOptions{})
	registerSplit(t, r, 2, ServiceOptions{})
	ro, err := r.StartRollout(1, rolloutOf(t, `{"canary_image_id": 2, "steps": [10, 50, 100], "interval": "1s"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ro.State != RolloutProgressing || ro.Step != 1 || ro.Percent != 10 {
		t.Fatalf("started as %+v", ro)
	}
	wantSplit := func(p float64) {
		t.Helper()
		split := r.Lookup(1).Options.Split
		if p == 0 {
			if len(split) != 0 {
				t.Fatalf("split %+v, want none", split)
			}
			return
		}
		if len(split) != 1 || split[0].ImageID != 2 || *split[0].Percent != p {
			t.Fatalf("split %+v, want image 2 at %v", split, p)
		}
	}
	wantSplit(10)

	// a registration keeps the rollout and its split; one with a split is 409
	mustRegister(t, r, svcSpec(1, ctr("c", 9001), ctr("d", 9101)))
	wantSplit(10)
	spec := svcSpec(1, ctr("c", 9001))
	spec.Options.Split = []SplitTarget{{ImageID: 2, Percent: pct(30)}}
	before := r.Lookup(1)
	_, err = r.Register(spec)
	wantKind(t, err, KindConflict)
	if r.Lookup(1) != before {
		t.Fatal("a refused registration changed the service")
	}

	if _, err := r.PauseRollout(1); err != nil {
		t.Fatal(err)
	}
	_, err = r.PauseRollout(1)
	wantKind(t, err, KindConflict)
	if _, err := r.ResumeRollout(1); err != nil {
		t.Fatal(err)
	}
	if ro, err = r.PromoteRollout(1); err != nil || ro.State != RolloutPromoted || ro.Percent != 100 || ro.Step != 3 {
		t.Fatalf("promoted: %+v, %v", ro, err)
	}
	wantSplit(100)
	got := r.Lookup(1).Rollout.Analysis
	if len(got) != 3 || got[0].Decision != DecisionPause || got[1].Decision != DecisionResume || got[2].Decision != DecisionPromote {
		t.Fatalf("analysis %+v", got)
	}

	// the record keeps the rollout, and reads back the same
	rec := r.Lookup(1).record()
	back, err := rec.spec()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Rollout, r.Lookup(1).Rollout) || len(back.Options.Split) != 1 {
		t.Fatalf("record read back as %+v", back.Rollout)
	}

	// promoted: a registration that replaces every container ends it
	mustRegister(t, r, svcSpec(1, ctr("c", 9001)))
	wantSplit(100)
	mustRegister(t, r, svcSpec(1, ctr("new", 9201)))
	wantSplit(0)
	if r.Lookup(1).Rollout != nil {
		t.Fatal("the promoted rollout outlived the replacement of the containers")
	}
	_, err = r.GetRollout(1)
	wantKind(t, err, KindNotFound)
}

func TestDeleteRollout(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 1, ServiceOptions{})
	registerSplit(t, r, 2, ServiceOptions{})
	if _, err := r.StartRollout(1, rolloutOf(t, `{"canary_image_id": 2, "steps": [10, 100], "interval": "1s"}`)); err != nil {
		t.Fatal(err)
	}
	ro, err := r.DeleteRollout(1)
	if err != nil || ro.State != RolloutAborted || ro.Percent != 0 {
		t.Fatalf("deleted: %+v, %v", ro, err)
	}
	if len(r.Lookup(1).Options.Split) != 0 {
		t.Fatal("split left after the abort")
	}
	// over: a split by hand is allowed again, and a new rollout too
	if _, err := r.StartRollout(1, rolloutOf(t, `{"canary_image_id": 2, "steps": [100], "interval": "1s"}`)); err != nil {
		t.Fatal(err)
	}
	r.DeleteRollout(1)
	if _, err := r.DeleteRollout(1); err != nil {
		t.Fatal(err)
	}
	_, err = r.DeleteRollout(1)
	wantKind(t, err, KindNotFound)
}

func TestStepCountsSub(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerSplit(t, r, 1, ServiceOptions{})
	st := r.Lookup(1).State
	st.Begin()
	st.Finish(200, false, time.Millisecond)
	base, _ := LocalCounts{r}.Counts(context.Background(), 1)
	for range 3 {
		st.Begin()
		st.Finish(502, true, 20*time.Millisecond)
	}
	st.Refuse(0, true)
	cur, _ := LocalCounts{r}.Counts(context.Background(), 1)
	d := cur.Sub(base)
	if d.Requests != 4 || d.Errors != 4 {
		t.Fatalf("step counts %d requests, %d errors; want 4 and 4", d.Requests, d.Errors)
	}
	if p99, ok := d.Latency.Quantile(0.99); !ok || p99 < 20 || p99 > 24 {
		t.Fatalf("p99 %v ms (%v), want about 20", p99, ok)
	}
	if got := base.Sub(cur); got != base {
		t.Fatal("counts below the base are not taken whole")
	}
}
