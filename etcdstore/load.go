// Reading the registry from etcd: the whole state with a linearizable read,
// and the keys and values of its records.

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

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

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

func (s *Store) portKey(port int) string { return s.prefix + portsDir + strconv.Itoa(port) }

var _ registry.RecordReader = (*Store)(nil)

// Current implements registry.RecordReader: the image's record as etcd
// holds it now (a linearizable read).
func (s *Store) Current(ctx context.Context, imageID int64) (registry.Remote, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return registry.Remote{}, err
	}
	resp, err := cli.Get(rctx, s.recordKey(imageID))
	if err != nil {
		return registry.Remote{}, s.requestError("read an image's record from", err)
	}
	cur := registry.Remote{ImageID: imageID, Revision: resp.Header.Revision}
	if len(resp.Kvs) > 0 {
		_, rec, err := s.decode(resp.Kvs[0])
		if err != nil {
			return registry.Remote{}, err
		}
		cur.Record, cur.Revision = rec, resp.Kvs[0].ModRevision
	}
	return cur, nil
}
