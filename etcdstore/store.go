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
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// Cache is the node's local copy of the shared registry (registry.BoltStore):
// the store mirrors into it everything it reads, commits and watches.
// Its revision only ever means "every change up to here is in the cache".
type Cache interface {
	Load(ctx context.Context) (*registry.Loaded, error)
	Mirror(ctx context.Context, changes []registry.Change, revision int64) error
	Replace(ctx context.Context, loaded *registry.Loaded) error
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

	mu       sync.Mutex
	closed   bool
	ok       bool
	detail   string
	revision int64
	leases   map[clientv3.LeaseID]struct{}
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

// setRevision sets the revision outright (a Reset may go backwards).
func (s *Store) setRevision(revision int64) {
	s.mu.Lock()
	s.revision = revision
	s.mu.Unlock()
}

// Load reads every record with a linearizable read (a quorum confirms it is
// current). When etcd cannot be reached it returns the cache's state, with
// the store degraded, so that a node starts while etcd is down.
func (s *Store) Load(ctx context.Context) (*registry.Loaded, error) {
	loaded, err := s.list(ctx)
	if err == nil {
		s.replaceCache(loaded)
		s.setOK(loaded.Revision)
		return loaded, nil
	}
	if !errors.Is(err, registry.ErrStoreUnavailable) {
		return nil, err
	}
	s.setDegraded(err.Error())
	why := "there is no local cache"
	if s.cache != nil {
		cached, cerr := s.cache.Load(ctx)
		switch {
		case cerr != nil:
			why = "the local cache cannot be read: " + cerr.Error()
		case cached == nil || cached.Revision <= 0:
			why = "the local cache is empty"
		default:
			s.log.Warn("etcd cannot be reached; starting from the local cache",
				zap.String("store", s.Describe()), zap.Int64("revision", cached.Revision),
				zap.Int("records", len(cached.Records)), zap.Error(err))
			s.mirrorMu.Lock()
			s.mirrored = map[int64]int64{}
			s.floor, s.safe = cached.Revision, cached.Revision
			s.mirrorMu.Unlock()
			s.mu.Lock()
			s.revision = max(s.revision, cached.Revision)
			// The cache keeps no revision per record: the watch starts
			// with a re-list, whose Reset gives every record its own.
			s.fromCache = true
			s.mu.Unlock()
			return cached, nil
		}
	}
	return nil, &unavailableError{msg: "cannot load the registry: " + why, err: err}
}

// list reads every record. Its errors wrap registry.ErrStoreUnavailable
// when etcd cannot be reached.
func (s *Store) list(ctx context.Context) (*registry.Loaded, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(rctx, s.prefix+servicesDir, clientv3.WithPrefix())
	if err != nil {
		return nil, s.requestError("read the registry from", err)
	}
	loaded := &registry.Loaded{Revision: resp.Header.Revision, Records: make([]registry.ServiceRecord, 0, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		_, rec, err := s.decode(kv)
		if err != nil {
			// A record that does not decode (a key written by hand, say)
			// is left out, not fatal: one bad key must not stop every
			// node of the cluster from starting. The watch treats it the
			// same way (as a deletion), so all nodes agree.
			s.log.Error("skipping an etcd key that is not a valid record",
				zap.String("key", string(kv.Key)), zap.Error(err))
			continue
		}
		if rec == nil {
			continue // not a record key (services/foo)
		}
		loaded.Records = append(loaded.Records, *rec)
	}
	slices.SortFunc(loaded.Records, func(a, b registry.ServiceRecord) int { return cmp.Compare(a.ImageID, b.ImageID) })
	return loaded, nil
}

// decode returns the record of a key below services/. A key that is not a
// record key gives (0, nil, nil); a record key whose value does not decode
// gives its image_id and the error.
func (s *Store) decode(kv *mvccpb.KeyValue) (int64, *registry.ServiceRecord, error) {
	id, err := registry.ParseRecordKey(strings.TrimPrefix(string(kv.Key), s.prefix))
	if err != nil {
		return 0, nil, nil
	}
	var rec registry.ServiceRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return id, nil, err
	}
	if rec.ImageID != id {
		return id, nil, fmt.Errorf("the record of image %d is under the key of image %d", rec.ImageID, id)
	}
	rec.Revision = kv.ModRevision
	return id, &rec, nil
}

func (s *Store) recordKey(id int64) string { return s.prefix + registry.RecordKey(id) }
func (s *Store) portKey(port int) string   { return s.prefix + portsDir + strconv.Itoa(port) }

// claim is an external port a commit takes: free, or from the image
// that releases it in the same commit.
type claim struct {
	port  int
	image int64
	from  int64 // the image releasing it in this commit; 0: the port must be free
}

// Commit applies the changes in one transaction. It compares each record's
// mod revision with the change's Expect (a missing key has 0), and that
// each port a change claims is free, so that two nodes can never both
// take a port; on a mismatch nothing is applied and a *registry.ConflictError
// carries the records as they are now.
func (s *Store) Commit(ctx context.Context, changes []registry.Change) (int64, error) {
	if len(changes) == 0 {
		return s.Status().Revision, nil
	}
	if len(changes) > MaxChanges {
		return 0, fmt.Errorf("etcd store: %d changes in one commit, at most %d", len(changes), MaxChanges)
	}
	cmps, ops, gets, claims, err := s.plan(changes)
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		s.setDegraded(err.Error())
		return 0, err
	}
	resp, err := cli.Txn(rctx).If(cmps...).Then(ops...).Else(gets...).Commit()
	if err != nil {
		// Once the request is sent, only etcd's refusal says that nothing
		// was applied: a timeout or a lost connection may come after etcd
		// committed it.
		switch {
		case refused(err):
			return 0, fmt.Errorf("etcd at %s refused the change: %w", s.eps, err)
		case ctx.Err() != nil && !errors.Is(rctx.Err(), context.DeadlineExceeded):
			return 0, commitUnknown("the commit to etcd was abandoned", ctx.Err())
		case errors.Is(err, context.DeadlineExceeded):
			err = commitUnknown(fmt.Sprintf("etcd at %s did not answer within %s", s.eps, s.cfg.RequestTimeout), err)
		default:
			err = commitUnknown(fmt.Sprintf("etcd at %s did not confirm the commit", s.eps), err)
		}
		if unreachable(err) {
			s.setDegraded(err.Error())
		}
		return 0, err
	}
	if !resp.Succeeded {
		return 0, s.conflict(ctx, cli, changes, claims, resp)
	}
	rev := resp.Header.Revision
	s.setOK(rev)
	mirror := make([]registry.Change, len(changes))
	for i, ch := range changes {
		mirror[i] = registry.Change{ImageID: ch.ImageID, Expect: ch.Expect, PrevPort: ch.PrevPort}
		if ch.Record != nil {
			rec := *ch.Record
			rec.Revision = rev
			mirror[i].Record = &rec
		}
	}
	s.mirrorCommit(mirror, rev)
	return rev, nil
}

// plan builds the transaction of a commit: the comparisons, the operations
// when they hold, and the reads when they do not (each change's record
// key, then each claimed port's key).
func (s *Store) plan(changes []registry.Change) (cmps []clientv3.Cmp, ops, gets []clientv3.Op, claims []claim, err error) {
	seen := make(map[int64]bool, len(changes))
	released := map[int]int64{} // port → the image releasing it
	claimed := map[int]int64{}  // port → the image claiming it
	for _, ch := range changes {
		if ch.ImageID <= 0 {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: a change of image_id %d", ch.ImageID)
		}
		if seen[ch.ImageID] {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: two changes of image %d in one commit", ch.ImageID)
		}
		seen[ch.ImageID] = true
		if ch.Record != nil && ch.Record.ImageID != ch.ImageID {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: the change of image %d carries the record of image %d", ch.ImageID, ch.Record.ImageID)
		}
		port := 0
		if ch.Record != nil {
			port = ch.Record.ExternalPort
		}
		if ch.PrevPort != 0 && ch.PrevPort != port {
			released[ch.PrevPort] = ch.ImageID
		}
		if port != 0 && port != ch.PrevPort {
			if other, ok := claimed[port]; ok {
				return nil, nil, nil, nil, fmt.Errorf("etcd store: images %d and %d both claim port %d in one commit", other, ch.ImageID, port)
			}
			claimed[port] = ch.ImageID
		}
	}
	for _, ch := range changes {
		key := s.recordKey(ch.ImageID)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", ch.Expect))
		gets = append(gets, clientv3.OpGet(key))
		if ch.Record != nil {
			value, err := json.Marshal(ch.Record)
			if err != nil {
				return nil, nil, nil, nil, fmt.Errorf("etcd store: encoding the record of image %d: %w", ch.ImageID, err)
			}
			ops = append(ops, clientv3.OpPut(key, string(value)))
		} else {
			ops = append(ops, clientv3.OpDelete(key))
		}
	}
	for port, image := range claimed {
		claims = append(claims, claim{port: port, image: image, from: released[port]})
	}
	slices.SortFunc(claims, func(a, b claim) int { return cmp.Compare(a.port, b.port) })
	for _, c := range claims {
		key := s.portKey(c.port)
		if c.from == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			// The port passes from one image to another in this commit.
			cmps = append(cmps, clientv3.Compare(clientv3.Value(key), "=", strconv.FormatInt(c.from, 10)))
		}
		ops = append(ops, clientv3.OpPut(key, strconv.FormatInt(c.image, 10)))
		gets = append(gets, clientv3.OpGet(key))
	}
	for port, image := range released {
		if _, ok := claimed[port]; ok {
			continue
		}
		// Released only if it is still the image's: a nested transaction,
		// so a port key written by hand for another image is left alone
		// rather than blocking the change.
		key := s.portKey(port)
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", strconv.FormatInt(image, 10))},
			[]clientv3.Op{clientv3.OpDelete(key)}, nil))
	}
	return cmps, ops, gets, claims, nil
}

// conflict explains a refused commit from the reads of its else branch,
// reading the records of the images that own the claimed ports.
func (s *Store) conflict(ctx context.Context, cli *clientv3.Client, changes []registry.Change, claims []claim, resp *clientv3.TxnResponse) error {
	e := &registry.ConflictError{}
	var details []string
	have := map[int64]bool{}
	for i, ch := range changes {
		// A record that is gone is gone as of the transaction's revision:
		// the watch's older events of it must not bring it back.
		cur := registry.Remote{ImageID: ch.ImageID, Revision: resp.Header.Revision}
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		exists := len(kvs) > 0
		if exists {
			_, rec, err := s.decode(kvs[0])
			if err != nil {
				s.log.Error("an etcd record does not decode", zap.String("key", string(kvs[0].Key)), zap.Error(err))
			}
			cur.Record, cur.Revision = rec, kvs[0].ModRevision
		}
		have[ch.ImageID] = true
		e.Current = append(e.Current, cur)
		switch {
		case exists && cur.Revision == ch.Expect, !exists && ch.Expect == 0:
		case ch.Expect == 0:
			details = append(details, fmt.Sprintf("image %d was created by another node (at revision %d)", ch.ImageID, cur.Revision))
		case !exists:
			details = append(details, fmt.Sprintf("image %d was deleted by another node (it was at revision %d)", ch.ImageID, ch.Expect))
		default:
			details = append(details, fmt.Sprintf("image %d was changed by another node (revision %d, not %d)", ch.ImageID, cur.Revision, ch.Expect))
		}
	}
	var owners []int64
	ownerPort := map[int64]int{}
	for j, c := range claims {
		kvs := resp.Responses[len(changes)+j].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			if c.from != 0 {
				details = append(details, fmt.Sprintf("port %d is no longer held by image %d", c.port, c.from))
			}
			continue
		}
		owner, err := strconv.ParseInt(string(kvs[0].Value), 10, 64)
		if err != nil || owner <= 0 {
			details = append(details, fmt.Sprintf("port %d is held by %q, not an image_id (the key %s)", c.port, kvs[0].Value, kvs[0].Key))
			continue
		}
		if c.from != 0 && owner == c.from || owner == c.image {
			continue
		}
		details = append(details, fmt.Sprintf("port %d is taken by image %d", c.port, owner))
		if !have[owner] {
			have[owner] = true
			owners = append(owners, owner)
			ownerPort[owner] = c.port
		}
	}
	if len(owners) > 0 {
		gets := make([]clientv3.Op, len(owners))
		for i, id := range owners {
			gets[i] = clientv3.OpGet(s.recordKey(id))
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		oresp, err := cli.Txn(rctx).Then(gets...).Commit()
		cancel()
		if err != nil {
			details = append(details, "the records of the ports' owners could not be read: "+err.Error())
		} else {
			for i, id := range owners {
				cur := registry.Remote{ImageID: id, Revision: oresp.Header.Revision}
				if kvs := oresp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
					_, cur.Record, _ = s.decode(kvs[0])
					cur.Revision = kvs[0].ModRevision
				} else {
					details = append(details, fmt.Sprintf("image %d has no record: the key %s is stale", id, s.portKey(ownerPort[id])))
				}
				e.Current = append(e.Current, cur)
			}
		}
	}
	if len(details) == 0 {
		details = append(details, "a concurrent change refused the commit")
	}
	e.Detail = strings.Join(details, "; ")
	return e
}

// replaceCache mirrors a whole state (Load, a re-list).
func (s *Store) replaceCache(loaded *registry.Loaded) {
	s.mu.Lock()
	s.fromCache = false
	s.mu.Unlock()
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	s.mirrored = make(map[int64]int64, len(loaded.Records))
	for _, r := range loaded.Records {
		s.mirrored[r.ImageID] = r.Revision
	}
	s.floor, s.safe = loaded.Revision, loaded.Revision
	if s.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Replace(ctx, loaded); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
}

// fresh drops the changes older than what the cache has of their image.
// mirrorMu is held.
func (s *Store) fresh(changes []registry.Change, revisions []int64) []registry.Change {
	if s.mirrored == nil {
		s.mirrored = map[int64]int64{}
	}
	out := changes[:0:0]
	for i, ch := range changes {
		known, ok := s.mirrored[ch.ImageID]
		if !ok {
			known = s.floor
		}
		if revisions[i] <= known {
			continue
		}
		s.mirrored[ch.ImageID] = revisions[i]
		out = append(out, ch)
	}
	return out
}

// mirrorCommit mirrors a commit's changes, at the revision the cache is
// complete up to (not the commit's).
func (s *Store) mirrorCommit(changes []registry.Change, rev int64) {
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	revisions := make([]int64, len(changes))
	for i := range revisions {
		revisions[i] = rev
	}
	changes = s.fresh(changes, revisions)
	if s.cache == nil || len(changes) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Mirror(ctx, changes, s.safe); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
}

// mirrorEvent mirrors what the watch delivered.
func (s *Store) mirrorEvent(records []registry.Remote, rev int64) {
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	changes := make([]registry.Change, len(records))
	revisions := make([]int64, len(records))
	for i, r := range records {
		changes[i] = registry.Change{ImageID: r.ImageID, Record: r.Record}
		revisions[i] = r.Revision
	}
	changes = s.fresh(changes, revisions)
	s.safe = max(s.safe, rev)
	if s.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Mirror(ctx, changes, s.safe); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
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

// requestError wraps a failed request; what says what it tried ("read the
// registry from").
func (s *Store) requestError(what string, err error) error {
	if unreachable(err) {
		if errors.Is(err, context.DeadlineExceeded) {
			return &unavailableError{msg: fmt.Sprintf("could not %s etcd at %s: no answer within %s", what, s.eps, s.cfg.RequestTimeout), err: err}
		}
		return &unavailableError{msg: fmt.Sprintf("could not %s etcd at %s", what, s.eps), err: err}
	}
	return fmt.Errorf("could not %s etcd at %s: %w", what, s.eps, err)
}

// commitUnknown is the error of a commit whose outcome is unknown: the
// request may have reached etcd and been applied. It wraps
// registry.ErrStoreUnavailable (a 503 whose detail says the outcome is
// unknown).
func commitUnknown(what string, err error) error {
	return &unavailableError{msg: what, err: err}
}

// refused tells an error by which etcd refused a request, having applied
// nothing (a transaction too large, no space left, no permission), from
// one that leaves the outcome unknown.
func refused(err error) bool {
	var code codes.Code
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	} else {
		return false
	}
	switch code {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange, codes.PermissionDenied,
		codes.Unauthenticated, codes.ResourceExhausted, codes.NotFound, codes.AlreadyExists:
		return true
	}
	return false
}

// unavailableError is an error of an unreachable etcd: it wraps both
// registry.ErrStoreUnavailable and the cause.
type unavailableError struct {
	msg string
	err error
}

func (e *unavailableError) Error() string   { return e.msg + ": " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{registry.ErrStoreUnavailable, e.err} }

// unreachable tells the errors of an etcd that cannot answer (down, no
// quorum, no leader, a leader change, timed out) from those of a request
// it refused.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, registry.ErrStoreUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
	}
	return false
}
