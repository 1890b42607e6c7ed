// Package etcdstore keeps the registry in etcd, so that several Caddy
// nodes share it: a registry.RecordStore (one key per image, each write a
// compare-and-swap transaction on the records' mod revisions) and a
// registry.Watcher (one watch on the records' prefix, from the revision the
// records were read at).
//
// The layout below the prefix (default "/imagelb/"):
//
//	services/{image_id}  the JSON of the image's registry.ServiceRecord
//	ports/{port}         the decimal image_id that owns the external port
//	nodes/{node_id}      a node's heartbeat, attached to its lease (members.go)
//	usage/..., usage-totals/{node_id}   the usage ledger (usage.go)
//	ondemand/claims/{start|stop}/{image_id}  which node calls a webhook, leased (ondemand.go)
//	ondemand/active/{image_id}  when any node last saw the image active (ondemand.go)
//	leads/rollout/{image_id}  the node that drives the image's rollout, leased and kept alive (lead.go)
//	rollout-counts/{image_id}/{node_id}  a node's counts of an image a rollout
//	                     involves, leased: the step is judged on every node's (counts.go)
//
// A local Cache (the node's bbolt file) mirrors every state the store
// reads, commits or watches, so a node can start, and keep serving, while
// etcd cannot be reached: Load then returns the cache's state and Status
// reports the store as degraded.
//
// When etcd is restored from a snapshot, restore it with
// `etcdutl snapshot restore --bump-revision N --mark-compacted`, as etcd's
// documentation advises for clusters with watchers: the watch then reports
// a compaction and every node re-lists.
package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Defaults of Config.
const (
	DefaultPrefix            = "/imagelb/"
	DefaultDialTimeout       = 5 * time.Second
	DefaultRequestTimeout    = 5 * time.Second
	DefaultLeaseTTL          = 10 * time.Second
	DefaultHeartbeatInterval = 2 * time.Second
)

// MaxChanges is the most changes one Commit takes. Each change costs up to
// three operations of the transaction (the record, the port it claims, the
// port it releases) and etcd allows 128 by default.
const MaxChanges = 32

// Key families below the prefix.
const (
	servicesDir = "services/"
	portsDir    = "ports/"
	nodesDir    = "nodes/"
)

// TLSConfig is the client's TLS to etcd. Endpoints with https:// use the
// system's roots when it is nil.
type TLSConfig struct {
	CertFile           string // client certificate (for etcd's --client-cert-auth)
	KeyFile            string
	CAFile             string // roots that sign etcd's certificates
	ServerName         string
	InsecureSkipVerify bool
}

// Config locates etcd.
type Config struct {
	Endpoints      []string
	Prefix         string // default "/imagelb/"; a missing final "/" is added
	Username       string
	Password       string
	TLS            *TLSConfig
	DialTimeout    time.Duration // default 5s: authentication, and the lease keep-alive's first deadline
	RequestTimeout time.Duration // default 5s: bounds every request
	// LeaseTTL is the time-to-live of a node's membership key (default
	// 10s): a node that stops without Close drops out after it.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often a node re-writes its membership key
	// (default 2s, at most a third of LeaseTTL).
	HeartbeatInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	c.HeartbeatInterval = min(c.HeartbeatInterval, c.LeaseTTL/3)
	c.Endpoints = slices.Clone(c.Endpoints)
	return c
}

// Status is the store's health, for /health, /api/v1/cluster and metrics.
type Status struct {
	Kind     string // "etcd"
	OK       bool   // false: degraded (etcd cannot be reached, or the watch is broken)
	Revision int64  // the last revision delivered or committed
	Detail   string // why it is degraded
}

// Store is a registry.RecordStore and registry.Watcher on etcd.
type Store struct {
	cfg    Config
	prefix string
	eps    string // the endpoints, for messages
	cache  Cache
	log    *zap.Logger

	ctx    context.Context // cancelled by Close: stops Watch, Join and the connector
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ready      chan struct{} // closed once cli is set
	cli        *clientv3.Client
	connErr    error // the last failure to create the client (with credentials); mu
	cancelDial context.CancelFunc
	probeEvery time.Duration // probeInterval; a test lengthens it

	mu       sync.Mutex
	closed   bool
	ok       bool
	detail   string
	revision int64
	leases   map[clientv3.LeaseID]struct{}
	// countsLease holds this node's shared counts (counts.go); 0: none yet.
	countsLease clientv3.LeaseID
	// fenced is closed, and replaced, when the node's heartbeat finds
	// that etcd's history is not the one it wrote to (members.go): each
	// watch ends and re-lists, as after a rewind.
	fenced chan struct{}
	// fromCache: the last Load returned the cache's state; the watch
	// re-lists before it watches.
	fromCache bool

	// mirrorMu serialises the writes to the cache. mirrored holds, for each
	// image written to the cache since the last Replace, the revision of
	// that write, and floor the revision of the last Replace: a commit's
	// mirror and the watch race, and an older change must not overwrite a
	// newer one. safe is the revision up to which every change is in the
	// cache (the watch's delivered revision), the only one the cache may
	// record: a commit at revision 10 says nothing of another node's
	// change at 9 that the watch has yet to deliver.
	mirrorMu sync.Mutex
	mirrored map[int64]int64
	floor    int64
	safe     int64
}

var (
	_ registry.RecordStore = (*Store)(nil)
	_ registry.Watcher     = (*Store)(nil)
)

// Open creates the client and returns at once: it does not wait for etcd,
// which may be down (Load then falls back to the cache). With a username
// and password the client must authenticate before its first request, so
// it is created in the background, retried until etcd answers.
func Open(cfg Config, cache Cache, logger *zap.Logger) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return nil, errors.New("etcd store: username and password go together")
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = zap.NewNop()
	}
	ccfg := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               logger.Named("etcd").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)),
		// gRPC's reconnect back-off grows to 2 minutes by default: a node
		// would take that long to notice that etcd is back.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})},
	}
	if cfg.TLS != nil {
		info := transport.TLSInfo{
			CertFile:           cfg.TLS.CertFile,
			KeyFile:            cfg.TLS.KeyFile,
			TrustedCAFile:      cfg.TLS.CAFile,
			ServerName:         cfg.TLS.ServerName,
			InsecureSkipVerify: cfg.TLS.InsecureSkipVerify,
		}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd store: tls: %w", err)
		}
		ccfg.TLS = tlsCfg
	}
	s := &Store{
		cfg:    cfg,
		prefix: cfg.Prefix,
		eps:    strings.Join(cfg.Endpoints, ", "),
		cache:  cache,
		log:    logger,
		ready:  make(chan struct{}),
		ok:     true,
		leases: map[clientv3.LeaseID]struct{}{},
		fenced: make(chan struct{}),

		probeEvery: probeInterval,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if cfg.Username == "" {
		// Without credentials, clientv3.New (grpc.NewClient) only sets the
		// connection up; it fails on a bad configuration, never because
		// etcd is down.
		cli, err := clientv3.New(ccfg)
		if err != nil {
			s.cancel()
			return nil, fmt.Errorf("etcd store: %w", err)
		}
		s.cli = cli
		close(s.ready)
		return s, nil
	}
	dialCtx, cancelDial := context.WithCancel(context.Background())
	s.cancelDial = cancelDial
	ccfg.Context = dialCtx
	s.wg.Add(1)
	go s.connect(ccfg)
	return s, nil
}

// connect creates a client that authenticates, retrying until etcd answers
// or the store is closed.
func (s *Store) connect(ccfg clientv3.Config) {
	defer s.wg.Done()
	bo := newBackoff(100*time.Millisecond, 2*time.Second)
	refusedBo := newBackoff(time.Second, 30*time.Second) // each attempt costs etcd a bcrypt
	for {
		cli, err := clientv3.New(ccfg)
		if err == nil {
			s.mu.Lock()
			s.cli = cli
			s.connErr = nil
			close(s.ready)
			s.mu.Unlock()
			return
		}
		if s.ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.connErr = err
		s.mu.Unlock()
		wait := bo.next()
		if unreachable(err) {
			s.setDegraded("etcd at " + s.eps + " cannot be reached: " + err.Error())
		} else {
			// Wrong credentials, most likely: keep trying (the user may
			// be created meanwhile), but say so.
			s.setDegraded("etcd at " + s.eps + " refused the connection: " + err.Error())
			wait = refusedBo.next()
		}
		if !sleep(s.ctx, wait) {
			return
		}
	}
}

// client returns the etcd client, waiting for it while ctx allows.
func (s *Store) client(ctx context.Context) (*clientv3.Client, error) {
	if s.ctx.Err() != nil {
		return nil, errors.New("etcd store: closed")
	}
	select {
	case <-s.ready:
		return s.cli, nil
	default:
	}
	s.mu.Lock()
	refused := s.connErr
	s.mu.Unlock()
	if refused != nil && !unreachable(refused) {
		// etcd answered, and refused: no use waiting.
		return nil, fmt.Errorf("etcd at %s refused the connection: %w", s.eps, refused)
	}
	select {
	case <-s.ready:
		return s.cli, nil
	case <-s.ctx.Done():
		return nil, errors.New("etcd store: closed")
	case <-ctx.Done():
		s.mu.Lock()
		err := s.connErr
		s.mu.Unlock()
		if err == nil {
			err = ctx.Err()
		}
		if unreachable(err) {
			return nil, &unavailableError{msg: "etcd at " + s.eps + " cannot be reached", err: err}
		}
		return nil, fmt.Errorf("etcd at %s refused the connection: %w", s.eps, err)
	}
}

// Describe names the store for messages.
func (s *Store) Describe() string {
	return fmt.Sprintf("etcd at %s (prefix %s)", s.eps, s.prefix)
}

// Status is safe for concurrent use.
func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Kind: "etcd", OK: s.ok, Revision: s.revision, Detail: s.detail}
}

// setDegraded marks the store degraded; the first time, it says so in the log.
func (s *Store) setDegraded(detail string) {
	s.mu.Lock()
	was := s.ok
	s.ok, s.detail = false, detail
	s.mu.Unlock()
	if was {
		s.log.Warn("etcd store degraded", zap.String("store", s.Describe()), zap.String("detail", detail))
	}
}

// setOK marks the store healthy at revision (0: leave the revision).
func (s *Store) setOK(revision int64) {
	s.mu.Lock()
	was := s.ok
	s.ok, s.detail = true, ""
	if revision > s.revision {
		s.revision = revision
	}
	s.mu.Unlock()
	if !was {
		s.log.Info("etcd store recovered", zap.String("store", s.Describe()), zap.Int64("revision", revision))
	}
}

// fence tells every watch that etcd's history is not the one it followed.
func (s *Store) fence() {
	s.mu.Lock()
	close(s.fenced)
	s.fenced = make(chan struct{})
	s.mu.Unlock()
}

// fences is closed at the next fence.
func (s *Store) fences() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fenced
}

// setRevision sets the revision outright (a Reset may go backwards).
func (s *Store) setRevision(revision int64) {
	s.mu.Lock()
	s.revision = revision
	s.mu.Unlock()
}

// Close stops the watches and the heartbeats, revokes the node leases (so
// the nodes drop out of the membership at once) and closes the client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	if s.cancelDial != nil {
		s.cancelDial()
	}
	s.wg.Wait()
	select {
	case <-s.ready:
	default:
		return nil // never connected
	}
	s.mu.Lock()
	leases := make([]clientv3.LeaseID, 0, len(s.leases))
	for id := range s.leases {
		leases = append(leases, id)
	}
	s.mu.Unlock()
	if len(leases) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		for _, id := range leases {
			if _, err := s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.log.Warn("cannot revoke the node's lease; it drops out when the lease expires",
					zap.String("lease", leaseHex(id)), zap.Error(err))
			}
		}
		cancel()
	}
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// enter registers a long-running call (Watch, Join); false once closed.
func (s *Store) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}
