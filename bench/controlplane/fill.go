// Filling a node's registry to a size before a cell: through the API,
// straight into etcd from a template record, or as the previous design's
// JSON file.

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/registry"
)

// fillAPI registers images (from, to] through the admin endpoint, with
// the writers.
func (n *node) fillAPI(to int) error {
	from := n.images
	t0 := time.Now()
	ids := make(chan int64)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range *writers {
		c := newClient(n.admin)
		wg.Go(func() {
			for id := range ids {
				pa, pb := ports(id, 0)
				if _, err := do(c, registerReq(n, id, pa, pb)); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
feed:
	for id := int64(from + 1); id <= int64(to); id++ {
		select {
		case ids <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(ids)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("%s: fill: %v", n.name, firstErr)
	}
	n.images = to
	n.fill = fillInfo{how: fmt.Sprintf("admin API, %d writers", *writers), took: time.Since(t0), images: to - from}
	return nil
}

// record is image id's record as the node writes it (the template is read
// back from etcd after one registration through the API).
func (b *bench) record(id int64, at time.Time) registry.ServiceRecord {
	rec := b.template
	rec.ImageID, rec.ImageName, rec.Updated = id, fmt.Sprintf("img%d", id), at
	rec.Containers = slices.Clone(b.template.Containers)
	pa, pb := ports(id, 0)
	rec.Containers[0].Port, rec.Containers[1].Port = pa, pb
	return rec
}

// takeTemplate registers image 1 through the API of a node on a
// one-member etcd of its own and reads its record back: the records
// written directly are exactly what a node writes.
func (b *bench) takeTemplate() error {
	c, err := startCluster(filepath.Join(b.root, "etcd-template"), 1)
	if err != nil {
		return err
	}
	defer c.close()
	n, err := b.newNode("template", 0, b.caddy, c.storeBlock(prefix), "a")
	if err != nil {
		return err
	}
	if err := n.startNode(); err != nil {
		return err
	}
	defer n.stop()
	if err := n.fillAPI(1); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.client.Get(ctx, prefix+registry.RecordKey(1))
	if err != nil {
		return err
	}
	if len(resp.Kvs) != 1 {
		return errors.New("the record of image 1 is not in etcd after its registration")
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &b.template); err != nil {
		return err
	}
	if len(b.template.Containers) != 2 {
		return fmt.Errorf("the record of image 1 has %d containers", len(b.template.Containers))
	}
	return nil
}

// fillEtcd writes the records of images (n.images, to] straight into etcd
// with the node stopped, then starts the node, which loads them.
func (b *bench) fillEtcd(n *node, c *cluster, to int) error {
	from := n.images
	n.stop()
	t0 := time.Now()
	const perTxn = 100 // etcd allows 128 operations per transaction
	batches := make(chan [2]int64)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	now := time.Now().UTC()
	for range 8 {
		wg.Go(func() {
			for bt := range batches {
				ops := make([]clientv3.Op, 0, perTxn)
				for id := bt[0]; id < bt[1]; id++ {
					v, err := json.Marshal(b.record(id, now))
					if err != nil {
						errs <- err
						return
					}
					ops = append(ops, clientv3.OpPut(prefix+registry.RecordKey(id), string(v)))
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.client.Txn(ctx).Then(ops...).Commit()
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var ferr error
	for lo := int64(from + 1); lo <= int64(to) && ferr == nil; lo += perTxn {
		select {
		case batches <- [2]int64{lo, min(lo+perTxn, int64(to)+1)}:
		case ferr = <-errs:
		}
	}
	close(batches)
	wg.Wait()
	if ferr == nil {
		select {
		case ferr = <-errs:
		default:
		}
	}
	if ferr != nil {
		return fmt.Errorf("%s: writing the records into etcd: %v", n.name, ferr)
	}
	n.images = to
	n.fill = fillInfo{how: "records written into etcd (client, 8×100 per txn)", took: time.Since(t0), images: to - from}
	return nil
}

// fillJSON writes the previous design's whole-state file, then starts the
// node, which loads it.
func (b *bench) fillJSON(n *node, to int) error {
	n.stop()
	t0 := time.Now()
	now := time.Now().UTC()
	st := &registry.State{Version: uint64(to), SavedAt: now, Services: make([]registry.ServiceRecord, 0, to)}
	for id := int64(1); id <= int64(to); id++ {
		st.Services = append(st.Services, b.record(id, now))
	}
	data, err := registry.EncodeState(st)
	if err != nil {
		return err
	}
	path := filepath.Join(n.home, "caddy", "imagelb", "registry.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	n.fill = fillInfo{how: fmt.Sprintf("registry.json written (%.1f MiB)", float64(len(data))/(1<<20)), took: time.Since(t0), images: to - n.images}
	n.images = to
	return nil
}

// checkCount asserts that the node holds exactly n.images images (the
// records written directly all passed its validation).
func (n *node) checkCount() error {
	resp, err := newClient(n.admin).Get(n.url("/imagelb/stats"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st struct {
		Services []json.RawMessage `json:"services"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("%s: /imagelb/stats: %v", n.name, err)
	}
	if len(st.Services) != n.images {
		return fmt.Errorf("%s: the node loaded %d images, %d were written\n%s", n.name, len(st.Services), n.images, n.logTail())
	}
	return nil
}

// ---------------------------------------------------------------- registrations/s
