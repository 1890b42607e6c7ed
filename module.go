// Package imagelb is a Caddy plugin that turns Caddy into the load balancer of
// a container platform: an app holding the image-keyed registry, an HTTP
// handler serving the platform's API and proxy, an admin API module, and a
// dynamic upstream source plus selection policy for reverse_proxy.
//
// The root package holds the Caddy modules and nothing that works without
// Caddy: module.go (the app), handler.go (the handler's routing and
// lifecycle), proxy.go (the request path, top to bottom), upstreams.go and
// selection.go (the source and policy modules), sticky.go (the sticky
// cookie), systemservice.go, adminapi.go, metrics.go, the imagelb global
// option's Caddyfile (caddyfile.go the app's block, caddyfile_service.go a
// service block, caddyfile_store.go the store, caddyfile_args.go the shared
// argument parsers; the other modules parse theirs beside their types),
// fdwatch.go and docs.go. It imports
// Caddy and the module's own packages: registry (pure Go: model, rules,
// balancing, counters), admin (the HTTP API), health (the checker), handoff
// (a listener wrapper), demo (the example's demo orchestrator), ui (embedded
// pages) and internal/recycle; none of them imports it.
package imagelb

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/admin"
	_ "github.com/imagelb/caddy-imagelb/demo"
	"github.com/imagelb/caddy-imagelb/handoff"
	"github.com/imagelb/caddy-imagelb/health"
	"github.com/imagelb/caddy-imagelb/registry"
	"github.com/imagelb/caddy-imagelb/ui"
)

func init() {
	caddy.RegisterModule(App{})
}

// Defaults of the app's options that are not health settings.
const (
	DefaultMaxRetries    = 3
	DefaultTimeout       = 30 * time.Second
	DefaultMaxContainers = 1000
)

// registries keeps the registry alive across config reloads: a reload
// provisions a new App while the old one still serves, and both must see the
// same services, containers and counters (as reverseproxy/hosts.go keeps hosts).
var registries = caddy.NewUsagePool()

const registryKey = "registry"

// running is the App that is currently started. The admin API module reads it
// per request, because admin modules are provisioned before apps and may
// outlive a failed reload.
var running atomic.Pointer[App]

// App is the imagelb app: it owns the image-keyed registry shared by the
// imagelb handler, the admin API and reverse_proxy's dynamic upstreams.
type App struct {
	// How often containers are health-checked. Falls back to the
	// HEALTH_CHECK_INTERVAL environment variable (seconds, or a duration).
	// Default: 30s.
	HealthInterval caddy.Duration `json:"health_interval,omitempty"`
	// How long one health check may take. Default: 5s.
	HealthTimeout caddy.Duration `json:"health_timeout,omitempty"`
	// The path requested by health checks. Default: /health.
	HealthPath string `json:"health_path,omitempty"`
	// The status codes a passing check answers with: a code ("200"), a
	// class ("2xx") or a range ("200-399"). Default: 2xx.
	HealthStatus string `json:"health_status,omitempty"`
	// How many consecutive passing checks make a container healthy.
	// Default: 1.
	HealthyThreshold int `json:"healthy_threshold,omitempty"`
	// How many consecutive failing checks make a container unhealthy.
	// Default: 1.
	UnhealthyThreshold int `json:"unhealthy_threshold,omitempty"`
	// The most health checks in flight at once. Default: 64.
	HealthConcurrency int `json:"health_concurrency,omitempty"`
	// How many failed attempts to reach a container while proxying
	// (connection failures and timeouts) within fail_duration make it
	// unhealthy at once, before the next active check (passive health
	// check); 0 turns passive checks off. Errors of the client's request
	// (malformed framing, a body cut short, a client that went away) never
	// count. A request tries each container at most once, so with 2 or
	// more no single request can eject a container. Default: 3.
	MaxFails *int `json:"max_fails,omitempty"`
	// The window in which max_fails failures count. Default: 30s.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
	// How many times a failed attempt is retried on another container.
	// Falls back to the MAX_RETRIES environment variable. Default: 3.
	MaxRetries *int `json:"max_retries,omitempty"`
	// How long a container may take to answer (dial plus response
	// headers) before the client gets a 504. Falls back to the TIMEOUT
	// environment variable (seconds, or a duration). Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// The balancing algorithm of services registered without one: a name
	// of registry.AlgorithmNames (the README's Traffic control describes
	// each). Default: round_robin.
	Algorithm string `json:"algorithm,omitempty"`
	// External ports to allocate to services registered without one, as
	// "lo-hi" (e.g. "8000-8099"). A service may be given external_port
	// only in this range, or a port of a site whose imagelb handler has
	// mapped_ports, and never a port another site is served on. Serve the
	// range with a mapped_ports site (JSON "listen": [":8000-8099"]).
	// Default: none.
	PortRange string `json:"port_range,omitempty"`
	// The host of containers registered without one. Default: 127.0.0.1.
	DefaultHost string `json:"default_host,omitempty"`
	// The hosts containers may be registered with: CIDRs ("10.0.0.0/8"), IP
	// addresses, and hostnames ("db.internal", "*.svc.cluster.local"). A
	// hostname that is not listed is resolved at registration and every
	// address it has must fall in a listed CIDR. Link-local and cloud
	// metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are
	// refused unless a range at least as specific is listed. Default: any
	// host but those.
	AllowedUpstreams []string `json:"allowed_upstreams,omitempty"`
	// Addresses of this Caddy that containers may nonetheless be at, as
	// IP:port or IP:lo-hi ("127.0.0.1:9001-9004"): the demo containers a
	// site of this same Caddy serves, say. Otherwise the proxy never dials
	// this Caddy's own listeners (the self rule): its admin and remote
	// admin endpoints, every listener of its sites (a loop) and its etcd
	// endpoints, on a wildcard listener's every local address, whatever
	// allowed_upstreams says. Each entry opens exactly that IP and those
	// ports; names and wildcards are refused. Default: none.
	AllowedSelfUpstreams []string `json:"allowed_self_upstreams,omitempty"`
	// The largest management request body in bytes. Default: 1048576 (1 MiB).
	MaxBody int64 `json:"max_body,omitempty"`
	// The most containers one service may have. Default: 1000.
	MaxContainers int `json:"max_containers,omitempty"`
	// The most services (images) the registry holds; past it a new
	// registration is refused with a 422. A registry already over a
	// lowered quota keeps what it has. Default: 100000.
	MaxServices int `json:"max_services,omitempty"`
	// The most containers of all services together; a change that would
	// cross it is refused whole with a 422. A container costs about 4.5 KB
	// of memory, so the default is about 0.9 GB. Default: 200000.
	MaxTotalContainers int `json:"max_total_containers,omitempty"`
	// The memory all mirror copies in flight may hold together, across all
	// images, in bytes: each copy counts its body, its headers and 48 KiB
	// for its goroutine and connection. A copy that does not fit is dropped
	// and counted in the target's mirror_dropped. Default: 67108864 (64 MiB).
	MirrorBudget int64 `json:"mirror_budget,omitempty"`
	// Where the registry is kept: every acknowledged change is committed
	// there before the answer is sent, and before anyone sees it. Read at
	// the first start of the process; changing it takes a restart.
	// Default: {"kind": "local"}.
	Store *StoreConfig `json:"store,omitempty"`
	// false is store memory (kept for configs written before store).
	// Default: true.
	Persist *bool `json:"persist,omitempty"`
	// The database file of store local. A name ending in .json (the
	// whole-state file of earlier versions) is imported once into the same
	// name ending in .db. Default: {data directory}/imagelb/registry.db.
	StateFile string `json:"state_file,omitempty"`
	// What to do when the database cannot be read back: "refuse" (Caddy
	// does not start, and says why and how to recover) or "start_empty"
	// (the bad file is renamed NAME.corrupt-TIMESTAMP and kept, and the
	// registry starts empty). Default: refuse.
	OnCorruptState string `json:"on_corrupt_state,omitempty"`
	// This node's name among the nodes sharing a store. Default: the host
	// name and the first 8 digits of Caddy's instance id.
	NodeID string `json:"node_id,omitempty"`
	// The length of a bucket of the usage ledger: usage is summed per
	// image and per interval. At least 1s, and a multiple of usage_flush.
	// Default: 1m.
	UsageInterval caddy.Duration `json:"usage_interval,omitempty"`
	// How often the usage counted since the last flush is committed to
	// the store; a kill -9 loses at most this much. Default: 10s.
	UsageFlush caddy.Duration `json:"usage_flush,omitempty"`
	// How long usage buckets are kept; older ones are deleted. Default:
	// 840h (35 days).
	UsageRetention caddy.Duration `json:"usage_retention,omitempty"`
	// The zone this Caddy runs in: containers of the same zone are
	// preferred while enough of them are available. Default: none.
	Zone string `json:"zone,omitempty"`
	// A request header naming the client's zone (set by a CDN, say); it
	// wins over Zone for that request. Default: none.
	ZoneHeader string `json:"zone_header,omitempty"`
	// The secret that signs sticky-session cookies. Set it (for example
	// from an environment variable) so that cookies stay valid across
	// restarts and across Caddy nodes. Default: a random secret per process.
	StickySecret string `json:"sticky_secret,omitempty"`
	// Whether servers that serve imagelb get the imagelb_handoff listener
	// wrapper without listing it: "on" (the Caddyfile's imagelb directive
	// adds it to its site's server, and a server serving imagelb without
	// it is logged as a warning) or "off" (neither). JSON configs must
	// list the wrapper themselves (README, Durability). Default: on.
	Handoff string `json:"handoff,omitempty"`
	// Whether another process may listen on the addresses of the servers
	// that serve imagelb (a blue-green handover). Otherwise, on Linux, the
	// imagelb_handoff wrapper the Caddyfile adds refuses to start a server
	// on an address another process listens on, naming it. JSON configs
	// set it on the wrapper (allow_other_listeners). Default: false.
	AllowOtherListeners bool `json:"allow_other_listeners,omitempty"`
	// How long a WebSocket or other upgraded connection proxied by imagelb
	// (containers and system services) stays open after a config reload
	// unloaded the handler that proxies it; 0 closes such connections at
	// the reload, as Caddy's own reverse_proxy does. On the final stop
	// they are closed at once. Default: 24h.
	StreamCloseDelay *caddy.Duration `json:"stream_close_delay,omitempty"`
	// The Prometheus series exported beyond the registry-wide ones:
	// per_image, per_container and top_images (Observability, Prometheus
	// metrics, has the cardinality of each). Default: the registry-wide
	// series and the per-image series of the 100 busiest images.
	Metrics *MetricsConfig `json:"metrics,omitempty"`

	// Start on demand (scale to zero): the webhooks that start and stop the
	// images whose service has the on_demand option, and how long requests
	// wait. Set only here, by the operator. Default: none (such images
	// answer 503 while they have no available container).
	OnDemand *OnDemandConfig `json:"on_demand,omitempty"`

	// Services declared in the configuration. A static service removed
	// from the configuration is removed on reload; services registered
	// through the API are not touched.
	Services []StaticService `json:"services,omitempty"`
	// The platform's own services behind the gateway (the original's
	// orchestrator and billing): requests below /api/v1 that no route owns
	// are forwarded to them by path. Default: none.
	SystemServices []SystemService `json:"system_services,omitempty"`

	reg        *registry.Registry
	holder     *registryHolder
	checker    *health.Checker
	events     *caddyevents.App
	ctx        caddy.Context
	static     []registry.ServiceSpec
	health     health.Config
	maxRetries int
	timeout    time.Duration
	logger     *zap.Logger
	api        *admin.API
	stickyKey  []byte
	stopWatch  chan struct{} // stops the open-file watch
	system     []*systemService
	self       []registry.SelfListener // this Caddy's listeners (self.go)
	served     *servedServers          // the servers that serve imagelb (reload.go)
}

// StaticService is a service declared in the configuration.
type StaticService struct {
	// The image id, a positive integer. Required.
	ImageID int64 `json:"image_id"`
	// The image name. Required.
	ImageName string `json:"image_name"`
	// The balancing algorithm. Default: the app's algorithm.
	Algorithm string `json:"algorithm,omitempty"`
	// The external port mapped to this image: a port of port_range, or of
	// a site whose imagelb handler has mapped_ports (never a port another
	// site is served on). Default: none, or one from the app's port_range.
	ExternalPort int `json:"external_port,omitempty"`
	// The containers of the service.
	Containers []StaticContainer `json:"containers,omitempty"`
	// Traffic-control options, with the API's JSON names: hash_key,
	// sticky, rate_limit, max_in_flight, slow_start, outlier, retry_budget.
	registry.ServiceOptions
}

// StaticContainer is a container of a static service.
type StaticContainer struct {
	// The container id, unique within the service. Required.
	ContainerID string `json:"container_id"`
	// A display name. Default: empty.
	Name string `json:"name,omitempty"`
	// Hostname or IP address. Default: the app's default_host.
	Host string `json:"host,omitempty"`
	// TCP port, 1-65535. Required.
	Port int `json:"port"`
	// Status: healthy, unhealthy, starting, draining or unknown. Default: healthy.
	Status string `json:"status,omitempty"`
	// Weight, 0-1000; 0 receives no new requests. Default: 1.
	Weight *int `json:"weight,omitempty"`
	// The zone the container runs in, for locality preference. Default: none.
	Zone string `json:"zone,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "imagelb",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision fills defaults (config, then environment, then built-in),
// validates the static services and attaches the shared registry.
func (a *App) Provision(ctx caddy.Context) error {
	a.served = new(servedServers)
	a.logger = ctx.Logger()
	a.ctx = ctx
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %v", err)
	}
	a.events = eventsApp.(*caddyevents.App)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if err := a.resolveOptions(); err != nil {
		return err
	}
	if err := a.checkStore(); err != nil {
		return err
	}
	if err := a.checkUsage(); err != nil {
		return err
	}
	if err := a.checkOnDemand(); err != nil {
		return err
	}
	if err := a.checkReload(); err != nil {
		return err
	}
	// the http app's listeners are added at Start: it may not be
	// provisioned yet (apps are provisioned in map order)
	if a.self, err = a.selfListeners(false); err != nil {
		return err
	}
	opts, err := a.registryOptions()
	if err != nil {
		return err
	}
	a.static, err = a.staticSpecs()
	if err != nil {
		return err
	}

	val, loaded, err := registries.LoadOrNew(registryKey, func() (caddy.Destructor, error) {
		return a.openRegistry(opts)
	})
	if err != nil {
		return err
	}
	a.holder = val.(*registryHolder)
	a.reg = a.holder.Registry
	if loaded && a.holder.identity != a.storeIdentity() {
		a.logger.Warn("store, persist and state_file take effect at the next start of the process",
			zap.String("in_use", a.holder.identity), zap.String("configured", a.storeIdentity()))
	}
	if loaded && a.holder.nodeID != a.nodeID() {
		a.logger.Warn("node_id takes effect at the next start of the process",
			zap.String("in_use", a.holder.nodeID), zap.String("configured", a.nodeID()))
	}
	val, _, err = checkers.LoadOrNew(checkerKey, func() (caddy.Destructor, error) {
		c := health.NewChecker(a.reg)
		c.SetDialControl(checkerDialControl) // the self and metadata rules (self.go)
		return checkerHolder{c}, nil
	})
	if err != nil {
		return err
	}
	a.checker = val.(checkerHolder).Checker
	a.stickyKey = stickyKey(a.StickySecret)
	if a.system, err = provisionSystemServices(a.SystemServices); err != nil {
		return err
	}
	a.api = a.newAPI("/imagelb")
	a.api.UI = ui.Dashboard("/imagelb/ui/")
	// The first round of health checks waits until every app has started,
	// so that containers served by this same Caddy are listening.
	if err := a.events.On("started", startChecks{a}); err != nil {
		return fmt.Errorf("subscribing to the started event: %v", err)
	}
	return nil
}

// newAPI returns the management API with the prefix, on this app's
// registry and system services.
func (a *App) newAPI(prefix string) *admin.API {
	api := &admin.API{Prefix: prefix, MaxBody: a.MaxBody, Registry: currentRegistry, HealthCheck: a.checkNow,
		Logger: a.logger.Named("api"), OpenAPI: openAPIDocument, Cluster: a.holder.cluster, Usage: a.holder.usage}
	if prefix != "/imagelb" {
		reg := a.reg
		api.Registry = func() *registry.Registry { return reg }
	}
	if len(a.system) > 0 {
		api.SystemServices = a.systemServiceViews
	}
	return api
}

// systemServiceViews lists the system services for the API.
func (a *App) systemServiceViews() []admin.SystemService {
	out := make([]admin.SystemService, len(a.system))
	for i, s := range a.system {
		out[i] = s.view()
	}
	return out
}

// startChecks starts the health checks when Caddy has started every app.
type startChecks struct{ a *App }

func (s startChecks) Handle(context.Context, caddy.Event) error {
	s.a.checker.Start()
	s.a.checker.Wake() // a reload may have changed the interval or the services
	return nil
}

// resolveOptions fills every option from the config, then the environment,
// then the built-in default.
func (a *App) resolveOptions() error {
	interval, err := durationOption(time.Duration(a.HealthInterval), "HEALTH_CHECK_INTERVAL", health.DefaultInterval)
	if err != nil {
		return err
	}
	a.health = health.Config{Interval: interval, Timeout: time.Duration(a.HealthTimeout), Path: a.HealthPath,
		HealthyThreshold: a.HealthyThreshold, UnhealthyThreshold: a.UnhealthyThreshold,
		MaxConcurrent: a.HealthConcurrency, MaxFails: health.DefaultMaxFails, FailDuration: time.Duration(a.FailDuration)}
	if a.MaxFails != nil {
		a.health.MaxFails = *a.MaxFails
	}
	if a.HealthStatus != "" {
		if a.health.ExpectLo, a.health.ExpectHi, err = health.ParseStatusRange(a.HealthStatus); err != nil {
			return fmt.Errorf("health_status: %v", err)
		}
	}
	a.health = a.health.WithDefaults()
	if a.timeout, err = durationOption(time.Duration(a.Timeout), "TIMEOUT", DefaultTimeout); err != nil {
		return err
	}
	switch {
	case a.MaxRetries != nil:
		a.maxRetries = *a.MaxRetries
	case os.Getenv("MAX_RETRIES") != "":
		n, err := strconv.Atoi(strings.TrimSpace(os.Getenv("MAX_RETRIES")))
		if err != nil || n < 0 {
			return fmt.Errorf("environment variable MAX_RETRIES=%q: want a whole number of retries, e.g. 3", os.Getenv("MAX_RETRIES"))
		}
		a.maxRetries = n
	default:
		a.maxRetries = DefaultMaxRetries
	}
	if a.MaxContainers == 0 {
		a.MaxContainers = DefaultMaxContainers
	}
	if a.MirrorBudget == 0 {
		a.MirrorBudget = registry.DefaultMirrorBudget
	}
	if a.MaxServices == 0 {
		a.MaxServices = registry.DefaultMaxServices
	}
	if a.MaxTotalContainers == 0 {
		a.MaxTotalContainers = registry.DefaultMaxTotalContainers
	}
	if a.MaxBody == 0 {
		a.MaxBody = admin.DefaultMaxBody
	}
	switch a.OnCorruptState {
	case "", "refuse", "start_empty":
	default:
		return fmt.Errorf("on_corrupt_state %q: use refuse or start_empty", a.OnCorruptState)
	}

	return nil
}

// Validate checks the options that Provision does not already reject.
func (a *App) Validate() error {
	if a.maxRetries < 0 {
		return fmt.Errorf("max_retries must not be negative, got %d", a.maxRetries)
	}
	if a.MaxContainers < 0 || a.MaxBody < 0 || a.MaxServices < 0 || a.MaxTotalContainers < 0 || a.MirrorBudget < 0 {
		return fmt.Errorf("max_containers, max_services, max_total_containers, max_body and mirror_budget must not be negative")
	}
	if a.health.MaxFails < 0 {
		return fmt.Errorf("max_fails must not be negative, got %d", a.health.MaxFails)
	}
	if a.Metrics != nil && a.Metrics.TopImages != nil && *a.Metrics.TopImages < 0 {
		return fmt.Errorf("metrics top_images must not be negative (0 exports no per-image series), got %d", *a.Metrics.TopImages)
	}
	return nil
}

// Start applies this configuration's options and static services to the
// shared registry and makes the app the one the admin API serves.
func (a *App) Start() error {
	// at Start, not Provision: "caddy validate" provisions a config
	// beside the running Caddy, whose sockets are not its own
	if err := handoff.CheckOtherListeners(); err != nil {
		return err
	}
	self, err := a.selfListeners(true)
	if err != nil {
		return err
	}
	a.self = self
	opts, err := a.registryOptions()
	if err != nil {
		return err
	}
	opts.Sites = sitePorts(a.ctx)
	for _, msg := range a.reg.SetOptions(opts) {
		a.logger.Warn("service left out of the registry: its external_port may not be mapped on this Caddy",
			zap.String("service", msg))
	}
	if err := a.reg.ApplyStatic(a.static); err != nil {
		return err
	}
	a.warnSeries()
	dialGuard.Store(opts.Guard)
	systemAddrs.Store(a.systemServiceAddrs())
	running.Store(a)
	a.stopWatch = make(chan struct{})
	go newFDWatch(a.logger).run(a.stopWatch)
	a.checker.Configure(a.health, a.emitChange, a.logger.Named("health"))
	a.startOnDemand()
	a.startRollouts()
	system := a.system
	a.checker.SetExtras(func() []health.Extra {
		out := make([]health.Extra, len(system))
		for i, s := range system {
			out[i] = s.healthTarget()
		}
		return out
	})
	a.logger.Info("imagelb started",
		zap.Int("services", a.reg.Summary().Services),
		zap.Duration("health_interval", a.health.Interval),
		zap.Int("max_retries", a.maxRetries),
		zap.Duration("timeout", a.timeout))
	return nil
}

// Stop stops serving the admin API from this instance.
func (a *App) Stop() error {
	running.CompareAndSwap(a, nil)
	if a.stopWatch != nil {
		close(a.stopWatch)
	}
	return nil
}

// Cleanup releases this instance's references to the shared registry and
// checker; the last one out stops the checker.
func (a *App) Cleanup() error {
	if a.checker != nil {
		_, _ = checkers.Delete(checkerKey)
	}
	if a.reg != nil {
		_, _ = registries.Delete(registryKey)
	}
	return nil
}

// checkNow serves the on-demand health check of the management API.
func (a *App) checkNow(ctx context.Context, imageID int64) (any, error) {
	rep, err := a.checker.CheckNow(ctx, imageID)
	if err != nil {
		return nil, err
	}
	return struct {
		Message string `json:"message"` // the original's answer
		health.Report
	}{"Health check completed", rep}, nil
}

// emitChange announces a container's status change as a Caddy event,
// imagelb.container_healthy or imagelb.container_unhealthy.
func (a *App) emitChange(ch health.Change) {
	name := "imagelb.container_unhealthy"
	if ch.To == registry.StatusHealthy {
		name = "imagelb.container_healthy"
	}
	a.events.Emit(a.ctx, name, map[string]any{
		"image_id":     ch.ImageID,
		"container_id": ch.ContainerID,
		"old_status":   string(ch.From),
		"new_status":   string(ch.To),
		"reason":       ch.Reason,
	})
}

// Registry returns the app's registry.
func (a *App) Registry() *registry.Registry { return a.reg }

func (a *App) registryOptions() (registry.Options, error) {
	alg, ok := registry.ParseAlgorithm(a.Algorithm)
	if !ok {
		return registry.Options{}, fmt.Errorf("algorithm %q: use %s", a.Algorithm, registry.AlgorithmNames)
	}
	guard, err := registry.NewGuard(a.AllowedUpstreams)
	if err != nil {
		return registry.Options{}, err
	}
	allowSelf, err := a.selfAllowed()
	if err != nil {
		return registry.Options{}, err
	}
	guard.SetSelf(a.self, localAddrs(), allowSelf)
	guard.Resolve = resolveForGuard
	opts := registry.Options{DefaultAlgorithm: alg, DefaultHost: a.DefaultHost, MaxContainers: a.MaxContainers,
		MaxServices: a.MaxServices, MaxTotalContainers: a.MaxTotalContainers, MirrorBudget: a.MirrorBudget, Guard: guard}
	if a.DefaultHost != "" {
		if msg := registry.CheckHost(a.DefaultHost); msg != "" {
			return opts, fmt.Errorf("default_host: %s", msg)
		}
	}
	if a.PortRange != "" {
		lo, hi, err := registry.ParsePortRange(a.PortRange)
		if err != nil {
			return opts, err
		}
		opts.PortLo, opts.PortHi = lo, hi
	}
	return opts, nil
}

// staticSpecs validates the static services and turns them into specs.
func (a *App) staticSpecs() ([]registry.ServiceSpec, error) {
	specs := make([]registry.ServiceSpec, 0, len(a.Services))
	seen := map[int64]bool{}
	ports := map[int]int64{}
	for i, s := range a.Services {
		where := fmt.Sprintf("services[%d] (image_id %d)", i, s.ImageID)
		alg, ok := registry.ParseAlgorithm(s.Algorithm)
		if !ok {
			return nil, fmt.Errorf("%s: unknown algorithm %q: use %s", where, s.Algorithm, registry.AlgorithmNames)
		}
		spec := registry.ServiceSpec{ImageID: s.ImageID, ImageName: s.ImageName, Algorithm: alg,
			ExternalPort: s.ExternalPort, Static: true, Options: s.ServiceOptions}
		for _, c := range s.Containers {
			spec.Containers = append(spec.Containers, c.spec())
		}
		if err := registry.FieldErrors(spec.Check()); err != nil {
			return nil, fmt.Errorf("%s: %v", where, err)
		}
		if seen[s.ImageID] {
			return nil, fmt.Errorf("%s: image_id declared twice", where)
		}
		seen[s.ImageID] = true
		if other, dup := ports[s.ExternalPort]; dup && s.ExternalPort != 0 {
			return nil, fmt.Errorf("%s: external_port %d is also given to image %d", where, s.ExternalPort, other)
		}
		ports[s.ExternalPort] = s.ImageID
		specs = append(specs, spec)
	}
	return specs, nil
}

// spec is the registry's form of the container, with the defaults; the
// registry's Check says what is wrong with it.
func (c StaticContainer) spec() registry.ContainerSpec {
	cs := registry.ContainerSpec{ContainerID: c.ContainerID, Name: c.Name, Host: c.Host, Port: c.Port,
		Status: registry.StatusHealthy, Weight: registry.DefaultWeight, Zone: c.Zone}
	if c.Status != "" {
		cs.Status = registry.Status(c.Status)
	}
	if c.Weight != nil {
		cs.Weight = *c.Weight
	}
	return cs
}

// checkers keeps the one health checker of the registry across reloads:
// its loop outlives any single config (like the registry it checks), and
// stops when the last config using it is cleaned up.
var checkers = caddy.NewUsagePool()

const checkerKey = "checker"

// checkerHolder lets the checker live in a caddy.UsagePool.
type checkerHolder struct{ *health.Checker }

// Destruct stops the checker when no config uses it any more.
func (h checkerHolder) Destruct() error {
	h.Stop()
	return nil
}

// currentRegistry returns the registry of the running app, or nil.
func currentRegistry() *registry.Registry {
	if a := running.Load(); a != nil {
		return a.reg
	}
	return nil
}

// durationOption resolves a duration from the config, then an environment
// variable ("30" means seconds; Go durations such as "1m30s" work too),
// then the default.
func durationOption(configured time.Duration, env string, def time.Duration) (time.Duration, error) {
	if configured > 0 {
		return configured, nil
	}
	v := strings.TrimSpace(os.Getenv(env))
	if v == "" {
		return def, nil
	}
	d, err := parseSeconds(v)
	if err != nil {
		return 0, fmt.Errorf("environment variable %s=%q: want seconds (e.g. 30) or a duration (e.g. 30s)", env, v)
	}
	return d, nil
}

// parseSeconds parses "30" as 30 seconds and anything else as a Caddy duration.
func parseSeconds(v string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		ns := f * float64(time.Second)
		switch {
		case math.IsNaN(f) || ns < 1:
			return 0, fmt.Errorf("must be positive")
		case ns >= math.MaxInt64:
			return 0, fmt.Errorf("too long")
		}
		return time.Duration(ns), nil
	}
	d, err := caddy.ParseDuration(v)
	if err == nil && d <= 0 {
		err = fmt.Errorf("must be positive")
	}
	return d, err
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
