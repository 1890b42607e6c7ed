// Package orchestrate is the orchestrator's side of imagelb's start on
// demand contract (README, Scale to zero): reading a start or stop webhook,
// and registering or removing a container through the imagelb API. The
// example's demo orchestrator (package demo) and the tests' stand-in
// (internal/testkit) both use it, so the two speak the contract the same way.
package orchestrate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The webhook actions, the last element of a webhook's path.
const (
	Start = "start"
	Stop  = "stop"
)

// WebhookPrefix begins the path of both webhooks:
// /api/images/{image_id}/start and /api/images/{image_id}/stop.
const WebhookPrefix = "/api/images/"

// ParseWebhook reads the image id and the action (Start or Stop) from a
// webhook's path; ok is false for anything but a POST to one of the two.
func ParseWebhook(r *http.Request) (id int64, action string, ok bool) {
	rest, found := strings.CutPrefix(r.URL.Path, WebhookPrefix)
	idText, action, _ := strings.Cut(rest, "/")
	id, err := strconv.ParseInt(idText, 10, 64)
	if !found || err != nil || id < 0 || r.Method != http.MethodPost || (action != Start && action != Stop) {
		return 0, "", false
	}
	return id, action, true
}

// API is the imagelb API an orchestrator registers containers through:
// Base is the admin endpoint's http://localhost:2019/imagelb, or a site's
// http://127.0.0.1:3000/api/v1.
type API struct {
	Base   string
	Client *http.Client // nil: http.DefaultClient
}

// Service is what an orchestrator reads of a Service.
type Service struct {
	ImageID    int64           `json:"image_id"`
	OnDemand   json.RawMessage `json:"on_demand"`
	Containers []struct {
		ContainerID string `json:"container_id"`
	} `json:"containers"`
}

// Service reads the image's Service; found is false when it is not
// registered.
func (a API) Service(ctx context.Context, id int64) (svc Service, found bool, err error) {
	body, status, err := a.do(ctx, http.MethodGet, fmt.Sprintf("/services/%d", id), nil)
	if err != nil {
		return svc, false, err
	}
	if status == http.StatusNotFound {
		return svc, false, nil
	}
	if status != http.StatusOK {
		return svc, false, fmt.Errorf("reading image_id %d: status %d: %s", id, status, body)
	}
	if err := json.Unmarshal(body, &svc); err != nil {
		return svc, false, fmt.Errorf("reading image_id %d: %v", id, err)
	}
	return svc, true, nil
}

// Register adds (or replaces) the container host:port of the image, with
// the status it is registered with (starting: imagelb checks it first).
func (a API) Register(ctx context.Context, id int64, containerID, host string, port int, status string) error {
	b, _ := json.Marshal(map[string]any{"host": host, "port": port, "status": status})
	body, code, err := a.do(ctx, http.MethodPut, containerPath(id, containerID), b)
	if err != nil {
		return fmt.Errorf("registering %s: %v", containerID, err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("registering %s: status %d: %s", containerID, code, body)
	}
	return nil
}

// Remove removes the container of the image; one already gone is no error.
func (a API) Remove(ctx context.Context, id int64, containerID string) error {
	body, code, err := a.do(ctx, http.MethodDelete, containerPath(id, containerID), nil)
	if err != nil {
		return fmt.Errorf("removing %s: %v", containerID, err)
	}
	if code != http.StatusOK && code != http.StatusNotFound {
		return fmt.Errorf("removing %s: status %d: %s", containerID, code, body)
	}
	return nil
}

func containerPath(id int64, containerID string) string {
	return fmt.Sprintf("/services/%d/containers/%s", id, url.PathEscape(containerID))
}

// do sends a request to the API, with a JSON body when there is one, and
// returns the answer's body (its first 64 KiB) and status.
func (a API) do(ctx context.Context, method, path string, body []byte) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return nil, 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json") // the API takes writes as JSON only
	}
	client := a.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return b, resp.StatusCode, err
}
