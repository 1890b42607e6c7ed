// Command etcd is etcd's own server, of the version this module requires
// (go.etcd.io/etcd/server/v3, the one the tests embed), as a binary:
// internal/etcdproc builds it to run a cluster's members as separate
// processes that a test kills with SIGKILL. It takes etcd's flags.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
