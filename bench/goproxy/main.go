// Command goproxy is the Go reference of the proxy benchmark (bench/proxy):
// the smallest round-robin reverse proxy net/http/httputil makes, the engine
// Traefik is built on, so that imagelb is compared with what a Go proxy can
// do on the same machine, not only with nginx and HAProxy.
//
//	go run ./bench/goproxy -listen 127.0.0.1:8080 -upstreams 127.0.0.1:9001,127.0.0.1:9002 -admin 127.0.0.1:8081
//
// The upstream list is an immutable slice behind an atomic pointer: a request
// reads it without a lock, and a change swaps in a new slice. The admin
// endpoint changes it while requests flow (the churn scenario):
//
//	GET    /upstreams              the list, one host:port a line
//	PUT    /upstreams/{host:port}  add one (200, or 200 unchanged if present)
//	DELETE /upstreams/{host:port}  remove one (404 if absent)
//	GET    /debug/pprof/...        net/http/pprof, for the benchmark's profiles
//
// Upgraded connections (WebSockets) are proxied by httputil.ReverseProxy
// itself and are never closed by a change of the list. The transport keeps
// 1,024 idle connections per upstream, as imagelb's does, and the copy
// buffers come from a pool, as Traefik's do (without one, ReverseProxy
// allocates 32 KiB per request).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address the proxy listens on")
	upstreams := flag.String("upstreams", "", "comma-separated host:port list of the first upstreams")
	admin := flag.String("admin", "", "address of the admin endpoint (empty: none)")
	flag.Parse()
	log.SetFlags(0)

	p := &pool{}
	var first []string
	for _, u := range strings.Split(*upstreams, ",") {
		if u = strings.TrimSpace(u); u != "" {
			if err := checkHostPort(u); err != nil {
				log.Fatalf("-upstreams: %v", err)
			}
			first = append(first, u)
		}
	}
	p.set(first)

	if *admin != "" {
		go func() { log.Fatal(http.ListenAndServe(*admin, p.adminMux())) }()
	}
	srv := &http.Server{Addr: *listen, Handler: p.reverseProxy(), ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// pool is the upstream list and the round-robin counter.
type pool struct {
	list atomic.Pointer[[]*url.URL]
	next atomic.Uint64

	mu sync.Mutex // serializes changes (readers never take it)
}

func (p *pool) set(hostports []string) {
	list := make([]*url.URL, len(hostports))
	for i, hp := range hostports {
		list[i] = &url.URL{Scheme: "http", Host: hp}
	}
	p.list.Store(&list)
}

func (p *pool) hostports() []string {
	var out []string
	for _, u := range *p.list.Load() {
		out = append(out, u.Host)
	}
	return out
}

// pick returns the next upstream in turn, or nil when the list is empty.
func (p *pool) pick() *url.URL {
	list := *p.list.Load()
	if len(list) == 0 {
		return nil
	}
	return list[(p.next.Add(1)-1)%uint64(len(list))]
}

func (p *pool) reverseProxy() http.Handler {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 0 // no limit across upstreams
	transport.MaxIdleConnsPerHost = 1024
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			u := p.pick()
			if u == nil { // emptied since ServeHTTP looked: the transport fails, ErrorHandler answers 502
				u = &url.URL{Scheme: "http"}
			}
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // pass the client's Host, as Caddy and Traefik do
			pr.SetXForwarded()
		},
		Transport:  transport,
		BufferPool: bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Printf("proxy error: %v", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(*p.list.Load()) == 0 {
			http.Error(w, "no upstream", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	})
}

// bufferPool is httputil.BufferPool on a sync.Pool of 32 KiB buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { return make([]byte, 32<<10) }}

func (bufferPool) Get() []byte  { return buffers.Get().([]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(b) } // (a slice header per Put, as in Traefik's pool)

func (p *pool) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /upstreams", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, strings.Join(p.hostports(), "\n"))
	})
	mux.HandleFunc("PUT /upstreams/{hostport}", func(w http.ResponseWriter, r *http.Request) {
		hp := r.PathValue("hostport")
		if err := checkHostPort(hp); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		list := p.hostports()
		if !slices.Contains(list, hp) {
			p.set(append(list, hp))
		}
	})
	mux.HandleFunc("DELETE /upstreams/{hostport}", func(w http.ResponseWriter, r *http.Request) {
		hp := r.PathValue("hostport")
		p.mu.Lock()
		defer p.mu.Unlock()
		list := p.hostports()
		i := slices.Index(list, hp)
		if i < 0 {
			http.Error(w, hp+" is not an upstream", http.StatusNotFound)
			return
		}
		p.set(slices.Delete(list, i, i+1))
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func checkHostPort(hp string) error {
	if _, _, err := net.SplitHostPort(hp); err != nil {
		return fmt.Errorf("upstream %q: want host:port", hp)
	}
	return nil
}
