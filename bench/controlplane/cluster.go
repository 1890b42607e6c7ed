// The etcd cluster a run measures against: its members embedded in this
// process, each in its own temp dir, with fsync on.

package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// cluster is an embedded etcd cluster on loopback.
type cluster struct {
	name      string
	members   []*embed.Etcd
	endpoints []string
	client    *clientv3.Client
}

func startCluster(dir string, n int) (*cluster, error) {
	c := &cluster{name: fmt.Sprintf("etcd×%d", n)}
	type urls struct{ client, peer url.URL }
	var us []urls
	var initial []string
	for i := range n {
		u := urls{
			client: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort())},
			peer:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort())},
		}
		us = append(us, u)
		initial = append(initial, fmt.Sprintf("m%d=%s", i, u.peer.String()))
		c.endpoints = append(c.endpoints, u.client.String())
	}
	atExit(c.close)
	token := fmt.Sprintf("controlplane-%d-%d", n, time.Now().UnixNano())
	for i, u := range us {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenClientUrls = []url.URL{u.client}
		cfg.AdvertiseClientUrls = []url.URL{u.client}
		cfg.ListenPeerUrls = []url.URL{u.peer}
		cfg.AdvertisePeerUrls = []url.URL{u.peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = token
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.LogLevel = "error"
		cfg.LogOutputs = []string{filepath.Join(dir, cfg.Name+".log")}
		// etcd's defaults otherwise (100 ms ticks, 1 s elections, fsync
		// on every commit): the figures are for durable writes.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: starting member %d: %v", c.name, i, err)
		}
		c.members = append(c.members, e)
	}
	timeout := time.After(60 * time.Second)
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return nil, fmt.Errorf("%s: member %d: %v", c.name, i, err)
		case <-timeout:
			return nil, fmt.Errorf("%s: member %d not ready after 60s", c.name, i)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	c.client = cli
	return c, nil
}

// close stops the followers, then the leader (a stopping leader hands
// over its leadership first, waiting for a follower).
func (c *cluster) close() {
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	var wg sync.WaitGroup
	var leaders []*embed.Etcd
	for _, e := range c.members {
		if e.Server.Leader() == e.Server.MemberID() {
			leaders = append(leaders, e)
			continue
		}
		wg.Go(e.Close)
	}
	wg.Wait()
	for _, e := range leaders {
		e.Close()
	}
	c.members = nil
}

func (c *cluster) storeBlock(pfx string) string {
	return fmt.Sprintf("store etcd {\n\t\t\tendpoints %s\n\t\t\tprefix %s\n\t\t}", strings.Join(c.endpoints, " "), pfx)
}

// ---------------------------------------------------------------- Caddy nodes
