package imagelb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// usageDoc is GET /api/v1/usage.
type usageDoc struct {
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Step   string    `json:"step"`
	Images []struct {
		ImageID        int64   `json:"image_id"`
		Requests       int64   `json:"requests"`
		FailedRequests int64   `json:"failed_requests"`
		BytesIn        int64   `json:"bytes_in"`
		BytesOut       int64   `json:"bytes_out"`
		RequestSeconds float64 `json:"request_seconds"`
		Buckets        []struct {
			Start    time.Time `json:"start"`
			Requests int64     `json:"requests"`
			BytesIn  int64     `json:"bytes_in"`
			BytesOut int64     `json:"bytes_out"`
		} `json:"buckets"`
	} `json:"images"`
}

// TestUsageCountsBytes: requests with bodies of known sizes, a streamed
// answer and an upgraded connection, through the proxy; the usage ledger
// (GET /api/v1/usage and the stats) counts exactly the bytes the client
// sent and got, and each request once. do checks the answers against the
// OpenAPI document.
func TestUsageCountsBytes(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Upgrade") == "echo":
			serveEchoUpgrade(t, w)
		case r.URL.Path == "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "chunk %d of a streamed answer\n", i)
				_ = http.NewResponseController(w).Flush()
			}
		case r.URL.Path == "/fail":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "broken")
		default:
			body, _ := io.ReadAll(r.Body)
			_, _ = fmt.Fprintf(w, "got %d bytes", len(body))
		}
	}))
	t.Cleanup(up.Close)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	const image = 8123 // no other test uses it: its usage is its own
	register(t, site+"/api/v1", image, "", map[string]any{"container_id": "u", "port": upPort})

	var sent, got, requests, failed int64
	send := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, fmt.Sprintf("%s/api/v1/proxy/%d%s", site, image, path), strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sent += int64(len(body))
		got += int64(len(data))
		requests++
		if resp.StatusCode >= 500 {
			failed++
		}
	}
	for i := range 20 {
		send("POST", "/upload", strings.Repeat("x", 100*i+1))
	}
	send("GET", "/stream", "")
	send("GET", "/fail", "")

	// An upgraded connection: its bytes both ways count, after the 101.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /api/v1/proxy/%d/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", image)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	fmt.Fprintf(conn, "hello over the upgraded connection\n")
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	sent += int64(len("hello over the upgraded connection\n"))
	got += int64(len(line))
	requests++

	var u usageDoc
	eventually(t, "the upgraded connection's request is settled", func() bool {
		mustDo(t, "GET", fmt.Sprintf("%s/api/v1/usage?image_id=%d", site, image), nil, 200, &u)
		return len(u.Images) == 1 && u.Images[0].Requests == requests
	})
	iu := u.Images[0]
	if iu.ImageID != image || iu.FailedRequests != failed || iu.BytesIn != sent || iu.BytesOut != got || iu.RequestSeconds <= 0 {
		t.Fatalf("usage %+v, want %d requests, %d failed, %d bytes in, %d out", iu, requests, failed, sent, got)
	}
	if u.Step != "1m0s" || !u.To.After(time.Now().Add(-time.Minute)) || u.To.Sub(u.From) < time.Hour {
		t.Fatalf("default range %s to %s step %s: want the last hour by minutes", u.From, u.To, u.Step)
	}
	var inBuckets, outBuckets int64
	for _, b := range iu.Buckets {
		inBuckets, outBuckets = inBuckets+b.BytesIn, outBuckets+b.BytesOut
	}
	if inBuckets != sent || outBuckets != got {
		t.Fatalf("buckets add up to %d in, %d out; the totals are %d, %d", inBuckets, outBuckets, sent, got)
	}
	st := getStats(t, image).Services[0]
	if st.BytesIn != sent || st.BytesOut != got || st.TotalRequests != requests {
		t.Fatalf("stats: %d requests, %d bytes in, %d out; want %d, %d, %d", st.TotalRequests, st.BytesIn, st.BytesOut, requests, sent, got)
	}

	// Every image when none is named; errors say what is wrong.
	var all usageDoc
	mustDo(t, "GET", site+"/api/v1/usage", nil, 200, &all)
	found := false
	for _, im := range all.Images {
		found = found || (im.ImageID == image && im.Requests == requests)
	}
	if !found {
		t.Fatalf("image %d missing from the usage of every image: %+v", image, all.Images)
	}
	wantError(t, "GET", site+"/api/v1/usage?from=yesterday", "", 422, "RFC 3339")
	wantError(t, "GET", site+"/api/v1/usage?step=7s", "", 422, "multiple")
	wantError(t, "GET", site+"/api/v1/usage?from=2026-12-01T10:00:00Z&to=2026-12-01T09:00:00Z", "", 422, "before")
	// issue 24, row 11: a range the ledger cannot answer was a 500
	// "encoding the response failed"
	for _, q := range []string{
		"from=9999-01-01T00:00:00Z&to=9999-12-31T23:59:59Z&step=8760h",
		"from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z",
		"from=1900-01-01T00:00:00Z&to=2026-12-01T00:00:00Z&step=87600h",
		"from=2026-12-01T00:00:00Z&to=2300-01-01T00:00:00Z&step=876000h",
	} {
		wantError(t, "GET", site+"/api/v1/usage?"+q, "", 422, "between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z")
	}
}
