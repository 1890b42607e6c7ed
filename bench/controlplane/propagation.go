// The propagation benchmark: how long a registration on one node takes to
// show on another (three etcd members, two Caddy nodes).

package main

import (
	"fmt"
	"io"
	"log"
	"path/filepath"
	"slices"
	"time"
)

type propResult struct {
	afterAck  []time.Duration // A answered 200 → B answers 200
	afterSend []time.Duration // A's request sent → B answers 200
	regA      []time.Duration // the registration on A
	timeouts  int
}

// propagation registers on node A and polls node B until the image shows,
// on the three-member cluster, under a prefix of its own.
func (b *bench) propagation() (*propResult, error) {
	e3, err := startCluster(filepath.Join(b.root, "etcd3-propagation"), 3)
	if err != nil {
		return nil, err
	}
	defer e3.close()
	log.Printf("== propagation: 2 nodes on a fresh %s, %d samples", e3.name, *propSamples)
	na, err := b.newNode("node a", 0, b.caddy, e3.storeBlock(prefix), "a")
	if err != nil {
		return nil, err
	}
	nb, err := b.newNode("node b", 0, b.caddy, e3.storeBlock(prefix), "b")
	if err != nil {
		return nil, err
	}
	for _, n := range []*node{na, nb} {
		if err := n.startNode(); err != nil {
			return nil, err
		}
		defer n.stop()
	}
	ca, cb := newClient(na.admin), newClient(nb.admin)
	res := &propResult{}
	const warm = 10
	for i := range *propSamples + warm {
		id := int64(i + 1)
		pa, pb := ports(id, 0)
		req := registerReq(na, id, pa, pb)
		t0 := time.Now()
		if _, err := do(ca, req); err != nil {
			return nil, fmt.Errorf("node a: %v", err)
		}
		t1 := time.Now()
		get := nb.url(fmt.Sprintf("/imagelb/services/%d", id))
		for {
			resp, err := cb.Get(get)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(t1) > 10*time.Second {
				res.timeouts++
				break
			}
			time.Sleep(time.Millisecond)
		}
		t2 := time.Now()
		if i < warm {
			continue
		}
		res.afterAck = append(res.afterAck, t2.Sub(t1))
		res.afterSend = append(res.afterSend, t2.Sub(t0))
		res.regA = append(res.regA, t1.Sub(t0))
	}
	for _, s := range [][]time.Duration{res.afterAck, res.afterSend, res.regA} {
		slices.Sort(s)
	}
	log.Printf("propagation: p50 %.2f ms, p99 %.2f ms, max %.2f ms after A's answer", ms(pct(res.afterAck, .5)), ms(pct(res.afterAck, .99)), ms(res.afterAck[len(res.afterAck)-1]))
	return res, nil
}

// ---------------------------------------------------------------- report
