package imagelb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/etcdstore"
	"github.com/imagelb/caddy-imagelb/ondemand"
	"github.com/imagelb/caddy-imagelb/registry"
	"github.com/imagelb/caddy-imagelb/rollout"
)

// The stores the registry can be kept in.
const (
	storeLocal  = "local"  // one bbolt file on this machine (the default)
	storeMemory = "memory" // nothing survives a restart (persist off)
	storeEtcd   = "etcd"   // shared by every node on the same etcd and prefix
)

// StoreConfig says where the registry is kept.
type StoreConfig struct {
	// local (a database file on this machine: state_file, or
	// {data directory}/imagelb/registry.db), memory (nothing survives a
	// restart), or etcd (shared by every Caddy on the same etcd and
	// prefix). Default: local.
	Kind string `json:"kind,omitempty"`
	// The etcd client URLs, e.g. http://10.0.0.1:2379. Required for etcd.
	Endpoints []string `json:"endpoints,omitempty"`
	// The key prefix the registry lives under. Default: /imagelb/.
	Prefix string `json:"prefix,omitempty"`
	// etcd user name and password. Placeholders such as {env.ETCD_PASSWORD}
	// or {file./run/secrets/etcd} are replaced at provision, so secrets need
	// not be in the config. Default: none.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// TLS to etcd: client certificate and key, the CA that signed etcd's
	// certificate, and the name to verify. Default: plain HTTP.
	TLS *StoreTLS `json:"tls,omitempty"`
	// How long connecting to etcd may take. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// How long one etcd request may take before a write answers 503.
	// Default: 5s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`
}

// StoreTLS is the TLS configuration of the etcd client.
type StoreTLS struct {
	// PEM files of the client certificate and key. Default: none.
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// PEM file of the CA that signed etcd's certificate. Default: the
	// system's roots.
	CAFile string `json:"ca_file,omitempty"`
	// The name etcd's certificate must have. Default: the endpoint's host.
	ServerName string `json:"server_name,omitempty"`
	// Skip verifying etcd's certificate (never in production). Default: false.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// storeKind is the kind of store this config asks for.
func (a *App) storeKind() string {
	switch {
	case a.Store != nil && a.Store.Kind != "":
		return a.Store.Kind
	case a.Persist != nil && !*a.Persist:
		return storeMemory
	}
	return storeLocal
}

// checkStore validates the store options (Provision).
func (a *App) checkStore() error {
	switch kind := a.storeKind(); kind {
	case storeLocal, storeMemory:
		if a.Store != nil && (len(a.Store.Endpoints) > 0 || a.Store.Prefix != "" || a.Store.TLS != nil) {
			return fmt.Errorf("store %s: endpoints, prefix and tls are options of store etcd", kind)
		}
	case storeEtcd:
		if len(a.Store.Endpoints) == 0 {
			return fmt.Errorf("store etcd: endpoints is required, e.g. endpoints http://127.0.0.1:2379")
		}
		for _, e := range a.Store.Endpoints {
			if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
				return fmt.Errorf("store etcd: endpoint %q: want a URL such as http://127.0.0.1:2379", e)
			}
		}
		if p := a.Store.Prefix; p != "" && (!strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/")) {
			return fmt.Errorf("store etcd: prefix %q must start and end with /, e.g. /imagelb/", p)
		}
	default:
		return fmt.Errorf("store %q: use local, memory or etcd", kind)
	}
	return nil
}

// storeIdentity names the store a config asks for, to tell a reload that
// asks for another (which takes a restart).
func (a *App) storeIdentity() string {
	switch kind := a.storeKind(); kind {
	case storeEtcd:
		return fmt.Sprintf("etcd %s %s", strings.Join(a.Store.Endpoints, ","), a.etcdPrefix())
	case storeLocal:
		return "local " + a.localPath()
	default:
		return kind
	}
}

func (a *App) etcdPrefix() string {
	if a.Store != nil && a.Store.Prefix != "" {
		return a.Store.Prefix
	}
	return "/imagelb/"
}

// localPath is the database file of store local: state_file, or the
// default in Caddy's data directory. A state_file ending in .json (the
// format before one record per image) names the JSON file to import; the
// database is beside it, ending in .db.
func (a *App) localPath() string {
	if a.StateFile != "" {
		if base, ok := strings.CutSuffix(a.StateFile, ".json"); ok {
			return base + ".db"
		}
		return a.StateFile
	}
	return filepath.Join(caddy.AppDataDir(), "imagelb", "registry.db")
}

// legacyPath is the whole-state JSON file imported on the first start.
func (a *App) legacyPath() string {
	if strings.HasSuffix(a.StateFile, ".json") {
		return a.StateFile
	}
	if a.StateFile == "" {
		return filepath.Join(caddy.AppDataDir(), "imagelb", "registry.json")
	}
	return ""
}

// nodeID is this node's name in a cluster.
func (a *App) nodeID() string {
	if a.NodeID != "" {
		return a.NodeID
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "caddy"
	}
	if id, err := caddy.InstanceID(); err == nil {
		return host + "-" + id.String()[:8]
	}
	return host
}

// registryHolder lets the registry, its store and the goroutines that keep
// it current live in a caddy.UsagePool, across reloads.
type registryHolder struct {
	*registry.Registry
	identity string // the store, as storeIdentity names it
	store    registry.RecordStore
	etcd     *etcdstore.Store // the store, when it is etcd
	nodeID   string
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	// rolloutCluster is the node's part of the rollouts in a cluster
	// (rolloutcluster.go); nil without etcd.
	rolloutCluster *rolloutCluster

	usageStore registry.UsageStore
	ledger     atomic.Pointer[registry.Ledger] // nil until the node's totals are loaded
	usageCfg   usageConfig

	activator *ondemand.Activator // start on demand and idle stops (ondemand.go)
	rollouts  *rollout.Driver     // canary rollouts (rollout.go)
}

// Destruct stops the watch and the membership and closes the store when
// the last configuration using the registry is gone.
func (h *registryHolder) Destruct() error {
	h.activator.Stop() // releases the waiting requests
	h.rollouts.Stop()
	if h.cancel != nil {
		h.cancel() // the ledger's goroutine flushes once more as it ends
	}
	h.wg.Wait()
	if h.store != nil {
		return h.store.Close()
	}
	return nil
}

// openRegistry creates the process's registry in the configured store and
// restores what the store holds.
func (a *App) openRegistry(opts registry.Options) (*registryHolder, error) {
	h := &registryHolder{Registry: registry.New(opts), identity: a.storeIdentity(), nodeID: a.nodeID(),
		usageCfg: a.usageConfig()}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	var err error
	switch a.storeKind() {
	case storeMemory:
		a.logger.Info("registry is kept in memory only (store memory)")
		h.usageStore = &registry.MemoryUsage{}
	case storeLocal:
		err = a.openLocal(h)
	case storeEtcd:
		err = a.openEtcd(ctx, h)
	}
	if err != nil {
		cancel()
		h.wg.Wait()
		if h.store != nil {
			h.store.Close()
		}
		return nil, err
	}
	logger := a.logger.Named("usage")
	h.goSafe(logger, "usage", func() { h.keepLedger(ctx, logger) })
	h.activator = ondemand.New(h.Registry)
	h.rollouts = rollout.New(h.Registry)
	return h, nil
}

// openLocal opens store local, importing the JSON state file of earlier
// versions once.
func (a *App) openLocal(h *registryHolder) error {
	path := a.localPath()
	db, err := a.openBolt(path)
	if err != nil {
		return err
	}
	h.store, h.usageStore = db, db
	if legacy := a.legacyPath(); legacy != "" {
		n, err := registry.ImportJSON(db, legacy)
		var corrupt *registry.CorruptStateError
		switch {
		case errors.As(err, &corrupt):
			return fmt.Errorf("%v. Caddy did not start and changed nothing. To recover: restore the file from a "+
				"backup, or move it away to start with the registry in %s", err, path)
		case err != nil:
			return fmt.Errorf("importing %s into %s: %v", legacy, path, err)
		case n > 0:
			a.logger.Info("imported the registry of an earlier version", zap.String("from", legacy),
				zap.String("kept_as", legacy+".imported"), zap.String("into", path), zap.Int("services", n))
		}
	}
	loaded, err := db.Load(context.Background())
	if err != nil {
		return fmt.Errorf("loading the registry from %s: %v", path, err)
	}
	return a.restore(h, loaded, path)
}

// openBolt opens the database, setting a damaged one aside when
// on_corrupt_state start_empty says so.
func (a *App) openBolt(path string) (*registry.BoltStore, error) {
	db, err := registry.OpenBolt(path)
	if err == nil {
		_, err = db.Load(context.Background()) // damage anywhere is found now
		if err != nil {
			db.Close()
		}
	}
	var corrupt *registry.CorruptStateError
	switch {
	case err == nil:
		return db, nil
	case errors.As(err, &corrupt) && a.OnCorruptState == "start_empty":
		aside, rerr := registry.SetAsideFile(path)
		if rerr != nil {
			return nil, fmt.Errorf("%v; moving it aside failed too: %v", err, rerr)
		}
		a.logger.Error("registry database is corrupt: starting empty; the bad file is kept",
			zap.String("state_file", path), zap.String("kept_as", aside), zap.Error(err))
		return registry.OpenBolt(path)
	case errors.As(err, &corrupt):
		return nil, fmt.Errorf("%v. Caddy did not start and changed nothing. To recover: restore the file "+
			"from a backup; or move it away to start with an empty registry (the orchestrator then registers "+
			"its containers again); or set the imagelb option on_corrupt_state start_empty, which keeps the "+
			"bad file as %s.corrupt-TIMESTAMP and starts empty", err, path)
	default:
		return nil, fmt.Errorf("opening the registry database: %v", err)
	}
}

// restore fills the registry with what a store loaded.
func (a *App) restore(h *registryHolder, loaded *registry.Loaded, where string) error {
	dropped, err := h.Restore(loaded)
	if err != nil {
		return fmt.Errorf("restoring the registry from %s: %v (move it away to start empty)", where, err)
	}
	for _, d := range dropped {
		a.logger.Warn("container left out of the restored registry: the upstream guard refuses it",
			zap.String("store", where), zap.String("container", d))
	}
	a.logger.Info("registry restored", zap.String("store", where), zap.Int("services", len(loaded.Records)),
		zap.Int64("revision", loaded.Revision))
	h.SetStore(h.store)
	return nil
}

// openEtcd opens store etcd: the registry is what etcd holds (or, while
// etcd cannot be reached, the local copy of what this node last saw), kept
// current by a watch, and this node is listed among the cluster's members.
func (a *App) openEtcd(ctx context.Context, h *registryHolder) error {
	cfg, err := a.etcdConfig()
	if err != nil {
		return err
	}
	cachePath := filepath.Join(caddy.AppDataDir(), "imagelb", "etcd-cache.db")
	cache, err := a.openBolt(cachePath)
	if err != nil {
		return fmt.Errorf("the local copy of the shared registry: %v", err)
	}
	logger := a.logger.Named("store")
	st, err := etcdstore.Open(cfg, cache, logger)
	if err != nil {
		cache.Close()
		return fmt.Errorf("store etcd: %v", err)
	}
	h.store, h.etcd, h.usageStore = st, st, st
	loaded, err := st.Load(context.Background())
	if errors.Is(err, registry.ErrStoreUnavailable) {
		logger.Warn("etcd cannot be reached and there is no local copy yet: starting empty, "+
			"catching up when etcd answers", zap.Error(err))
		loaded, err = &registry.Loaded{}, nil
	}
	if err != nil {
		return fmt.Errorf("store etcd: %v", err)
	}
	if err := a.restore(h, loaded, st.Describe()); err != nil {
		return err
	}
	reg := h.Registry
	h.goSafe(logger, "watch", func() {
		st.Watch(ctx, loaded.Revision, func(ev registry.RemoteEvent) {
			// New containers are checked in the health checker's round,
			// as local registrations are: waking it at each event would
			// restart its round (and list every service) per change.
			for _, err := range reg.ApplyRemote(ev) {
				logger.Error("record or container left out: it does not pass validation", zap.Error(err))
			}
		})
	})
	node := etcdstore.Node{ID: h.nodeID, Address: nodeAddress(), Version: moduleVersion}
	h.goSafe(logger, "membership", func() { st.Join(ctx, node, reg.Revision) })
	rc := newRolloutCluster(reg, st, h.nodeID, a.logger.Named("rollout"))
	h.rolloutCluster = rc
	h.goSafe(logger, "rollouts", func() { rc.run(ctx) })
	return nil
}

// goSafe runs fn in a goroutine that Destruct waits for, recovering from a
// panic.
func (h *registryHolder) goSafe(logger *zap.Logger, name string, fn func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer func() {
			if err := recover(); err != nil {
				logger.Error("panic", zap.String("goroutine", name), zap.Any("error", err),
					zap.ByteString("stack", debug.Stack()))
			}
		}()
		fn()
	}()
}

// etcdConfig is the etcd client configuration, with placeholders replaced.
func (a *App) etcdConfig() (etcdstore.Config, error) {
	repl := caddy.NewReplacer()
	sc := a.Store
	cfg := etcdstore.Config{Endpoints: sc.Endpoints, Prefix: a.etcdPrefix(),
		Username: repl.ReplaceAll(sc.Username, ""), Password: repl.ReplaceAll(sc.Password, ""),
		DialTimeout: time.Duration(sc.DialTimeout), RequestTimeout: time.Duration(sc.RequestTimeout)}
	if sc.Password != "" && cfg.Password == "" {
		return cfg, fmt.Errorf("store etcd: password %q is empty once its placeholders are replaced: set the "+
			"variable or file it names", sc.Password)
	}
	if t := sc.TLS; t != nil {
		cfg.TLS = &etcdstore.TLSConfig{CertFile: repl.ReplaceAll(t.CertFile, ""), KeyFile: repl.ReplaceAll(t.KeyFile, ""),
			CAFile: repl.ReplaceAll(t.CAFile, ""), ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	}
	return cfg, nil
}

// nodeAddress is what this node lists as its address: its host name.
func nodeAddress() string {
	host, _ := os.Hostname()
	return host
}

// storeState is the store's part of /health and /api/v1/cluster.
type storeState struct {
	Kind     string `json:"kind"`
	Status   string `json:"status"` // ok or degraded
	Revision int64  `json:"revision"`
	Detail   string `json:"detail,omitempty"`
}

// storeState reports on the registry's store.
func (h *registryHolder) storeState() storeState {
	if h.etcd != nil {
		st := h.etcd.Status()
		s := storeState{Kind: storeEtcd, Status: "ok", Revision: h.Revision(), Detail: st.Detail}
		if !st.OK {
			s.Status = "degraded"
		}
		return s
	}
	kind := storeLocal
	if h.store == nil {
		kind = storeMemory
	}
	return storeState{Kind: kind, Status: "ok"}
}

// clusterView is GET /api/v1/cluster.
type clusterView struct {
	NodeID string               `json:"node_id"`
	Store  storeState           `json:"store"`
	Nodes  []etcdstore.NodeInfo `json:"nodes"`
}

// cluster describes this node, its store and the nodes sharing it. With a
// store that is not shared, this node is the only one; with etcd
// unreachable, the nodes are not known and the list is empty.
func (h *registryHolder) cluster(ctx context.Context) (any, error) {
	v := clusterView{NodeID: h.nodeID, Store: h.storeState(), Nodes: []etcdstore.NodeInfo{}}
	if h.etcd == nil {
		v.Nodes = append(v.Nodes, etcdstore.NodeInfo{NodeID: h.nodeID, Address: nodeAddress(),
			Version: moduleVersion, LastSeen: time.Now().UTC(), Revision: v.Store.Revision})
		return v, nil
	}
	nodes, err := h.etcd.Nodes(ctx)
	if err != nil {
		v.Store.Status, v.Store.Detail = "degraded", err.Error()
		return v, nil
	}
	v.Nodes = nodes
	return v, nil
}
