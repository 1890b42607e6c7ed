// Package chaos checks a cluster of imagelb nodes the way etcd's robustness
// tests and Jepsen check a database: clients on every node record each
// operation (invoke and return times, node, request, answer) while faults
// hit etcd and the nodes, then the history is checked.
//
//   - Writes (register, PUT, PATCH and DELETE of containers, DELETE of a
//     service, port claims) and etcd's own reads (one transaction over the
//     records and the port keys, every 100 ms) must be linearizable against
//     Model, with porcupine. A 200 is applied, with the answer the model
//     gives; a 404 or 409 is not applied (with StrictRejects, it must also
//     have been right at some moment of the request); a 503, a timeout, a
//     cut connection or another 5xx is unknown. Each Register, PUT and PATCH
//     carries its own number as cpu_usage, so an unknown one whose number
//     etcd's history shows took effect before the history's watch saw it.
//     Any other unknown write stays pending (porcupine may place it anywhere
//     after its call, or nowhere): a delete leaves no number, nor does a
//     registration without containers, and a node commits the changes its
//     writers queued meanwhile as one record per image, which carries only
//     the last one's numbers.
//   - A node's reads may lag, but each must be a version etcd had, never
//     older than one the same node process showed before: the history's own
//     watch records every version of each record, and each node's reads
//     must walk forward through them. A restarted node is a new process (it
//     starts from its local copy) and starts a new walk.
//   - Once the faults are healed, every node must serve etcd's state within
//     30 s, and that state is the history's final read.
//   - The port keys must agree with the records at every read of etcd.
//
// The model is partitioned by group: a group is two images that contend for
// one external port, so a check stays small (porcupine checks each group
// alone) while port claims still race.
//
// etcd's three members are embedded in the process by default (etcdtest,
// the module's etcd): the member faults close them, cutting their clients
// first. With Config.Etcd they are processes of an etcd binary (etcdproc:
// the module's etcd built from its own main, or Debian's etcd-server 3.4),
// and the member faults kill them with SIGKILL and restart them on their
// data directories, as a crashed member comes back.
package chaos

import (
	"fmt"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Shape of the workload: few images, few containers, so that writers
// contend.
const (
	// ImagesPerGroup images share one external port.
	ImagesPerGroup = 2
	// Containers is the pool of container ids of an image: c0, c1, ...
	Containers = 4
	// firstImage is the image_id of group 0's first image.
	firstImage = 101
	// firstPort is the external port group 0's images contend for. Every
	// node listens on it (a site of mapped ports binds all addresses), so it
	// lies outside the kernel's ephemeral range (32768 up) and testkit's
	// FreePort range (10000 up): there, a client connection's source port
	// took it now and then, and a node failed to start with "bind: address
	// already in use".
	firstPort = 9400
)

// ImageID is the image_id of an image of a group.
func ImageID(group, slot int) int64 { return int64(firstImage + ImagesPerGroup*group + slot) }

// GroupPort is the external port a group's images claim.
func GroupPort(group int) int { return firstPort + group }

// imageOf returns the group and slot of an image_id, ok false for one the
// workload does not use.
func imageOf(id int64, groups int) (group, slot int, ok bool) {
	i := int(id) - firstImage
	if i < 0 || i >= groups*ImagesPerGroup {
		return 0, 0, false
	}
	return i / ImagesPerGroup, i % ImagesPerGroup, true
}

// Status values of a container in the model (the workload pushes healthy
// and draining only; the nodes run no health check that could change them).
const (
	noStatus uint8 = iota
	healthy
	draining
)

var statusNames = [...]string{noStatus: "", healthy: "healthy", draining: "draining"}

func parseStatus(s string) uint8 {
	switch s {
	case "healthy":
		return healthy
	case "draining":
		return draining
	}
	return 255 // a status the workload never sets: never equal to the model's
}

// Ctr is a container in the model.
type Ctr struct {
	Present bool
	Weight  int
	Status  uint8
}

func (c Ctr) String() string {
	if !c.Present {
		return "-"
	}
	return fmt.Sprintf("w%d/%s", c.Weight, statusNames[c.Status])
}

// Image is an image in the model: registered or not, whether it holds its
// group's port, and its containers by index (c0 is Ctrs[0]).
type Image struct {
	Exists bool
	Port   bool
	Ctrs   [Containers]Ctr
	// Odd is set when an answer or a record has something the workload
	// never writes (another port, an unknown container): it never equals a
	// state of the model.
	Odd bool
}

func (im Image) String() string {
	if !im.Exists && !im.Odd {
		return "none"
	}
	var b strings.Builder
	if im.Odd {
		b.WriteString("ODD ")
	}
	if im.Port {
		b.WriteString("port ")
	}
	b.WriteString("[")
	for i, c := range im.Ctrs {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "c%d:%s", i, c)
	}
	b.WriteString("]")
	return b.String()
}

// State is one group: its images by slot.
type State [ImagesPerGroup]Image

func (s State) String() string {
	parts := make([]string, len(s))
	for i, im := range s {
		parts[i] = fmt.Sprintf("#%d %s", i, im)
	}
	return strings.Join(parts, " | ")
}

// Kind is an operation of the workload.
type Kind uint8

// The operations.
const (
	Register Kind = iota // POST .../register: replace the container set, maybe claim the group's port
	Put                  // PUT .../containers/{id}
	Patch                // PATCH .../containers/{id}: weight and/or status
	DelCtr               // DELETE .../containers/{id}
	DelSvc               // DELETE .../services/{image_id}
	Read                 // a linearizable read of the group from etcd
	// Restored is etcd restored from a snapshot: the state becomes the
	// one read right after the restore (Result.State), whatever it was.
	Restored
)

var kindNames = [...]string{"register", "put", "patch", "delete_container", "delete_service", "read", "restored"}

func (k Kind) String() string { return kindNames[k] }

// Op is an operation's request.
type Op struct {
	Kind   Kind
	Group  int
	Slot   int
	Ctr    int
	Weight int   // Put, Patch; -1: a Patch that leaves the weight
	Status uint8 // Put, Patch; noStatus: a Patch that leaves the status
	Claim  bool  // Register: with external_port
	Ctrs   [Containers]Ctr
	Node   string // the node asked; "etcd" for a Read
	// Epoch is the number of restores of etcd before the operation: each
	// epoch is checked alone, from the state etcd was restored to.
	Epoch int
	// Mark is the write's own number, sent as each container's cpu_usage
	// (Register, Put, Patch): a record that carries it shows that the
	// write took effect.
	Mark int64
}

func (op Op) String() string {
	img := ImageID(op.Group, op.Slot)
	switch op.Kind {
	case Register:
		claim := ""
		if op.Claim {
			claim = fmt.Sprintf(" external_port=%d", GroupPort(op.Group))
		}
		return fmt.Sprintf("%s register %d%s %s", op.Node, img, claim, Image{Exists: true, Ctrs: op.Ctrs})
	case Put:
		return fmt.Sprintf("%s put %d/c%d %s", op.Node, img, op.Ctr, Ctr{true, op.Weight, op.Status})
	case Patch:
		var set []string
		if op.Weight >= 0 {
			set = append(set, fmt.Sprintf("weight=%d", op.Weight))
		}
		if op.Status != noStatus {
			set = append(set, "status="+statusNames[op.Status])
		}
		return fmt.Sprintf("%s patch %d/c%d %s", op.Node, img, op.Ctr, strings.Join(set, ","))
	case DelCtr:
		return fmt.Sprintf("%s delete %d/c%d", op.Node, img, op.Ctr)
	case DelSvc:
		return fmt.Sprintf("%s delete %d", op.Node, img)
	}
	if op.Kind == Restored {
		return fmt.Sprintf("etcd restored (epoch %d) group %d", op.Epoch, op.Group)
	}
	return fmt.Sprintf("etcd read group %d", op.Group)
}

// Result is an operation's answer.
type Result struct {
	// Code is 200, 404 or 409, or 0: the effect is unknown (503, a timeout,
	// a connection cut, another 5xx).
	Code int
	// Applied: an unknown write whose mark etcd's history shows; it took
	// effect before its (then finite) return.
	Applied bool
	// PortConflict: a 409 that says the port is mapped to another image (a
	// 409 for 32 lost races says nothing about the state).
	PortConflict bool
	Ctr          Ctr   // the container answered by Put, Patch, DelCtr
	Image        Image // the service answered by Register, DelSvc
	State        State // a Read's
	Detail       string
}

func (r Result) String() string {
	switch r.Code {
	case 0:
		if r.Applied {
			return "unknown, seen applied: " + r.Detail
		}
		return "unknown: " + r.Detail
	case 200:
		return "200"
	}
	return fmt.Sprintf("%d %s", r.Code, r.Detail)
}

// apply is what a sequential registry answers to op in state s: the next
// state, the status, and the container or service it answers.
func apply(s State, op Op) (next State, code int, ctr Ctr, img Image) {
	next = s
	cur := s[op.Slot]
	switch op.Kind {
	case Register:
		if op.Claim && s[1-op.Slot].Port {
			return s, 409, ctr, img
		}
		img = Image{Exists: true, Port: op.Claim || cur.Port, Ctrs: op.Ctrs}
		next[op.Slot] = img
		return next, 200, ctr, img
	case Put:
		if !cur.Exists {
			return s, 404, ctr, img
		}
		ctr = Ctr{Present: true, Weight: op.Weight, Status: op.Status}
		next[op.Slot].Ctrs[op.Ctr] = ctr
		return next, 200, ctr, img
	case Patch, DelCtr:
		if !cur.Exists || !cur.Ctrs[op.Ctr].Present {
			return s, 404, ctr, img
		}
		ctr = cur.Ctrs[op.Ctr]
		if op.Kind == DelCtr {
			next[op.Slot].Ctrs[op.Ctr] = Ctr{}
			return next, 200, ctr, img
		}
		if op.Weight >= 0 {
			ctr.Weight = op.Weight
		}
		if op.Status != noStatus {
			ctr.Status = op.Status
		}
		next[op.Slot].Ctrs[op.Ctr] = ctr
		return next, 200, ctr, img
	case DelSvc:
		if !cur.Exists {
			return s, 404, ctr, img
		}
		next[op.Slot] = Image{}
		return next, 200, ctr, cur
	}
	return s, 200, ctr, img
}

// step is the model's step: may op, answered r, follow state s?
func step(s State, op Op, r Result) (bool, State) {
	switch op.Kind {
	case Read:
		return r.State == s, s
	case Restored:
		return true, r.State
	}
	next, code, ctr, img := apply(s, op)
	switch r.Code {
	case 0: // applied or not: porcupine places it anywhere after its call, the end included
		if r.Applied {
			return code == 200, next
		}
		return true, next
	case 409:
		if r.PortConflict {
			return code == 409, s
		}
		return true, s // lost 32 races: not applied
	case 404:
		return code == 404, s
	case 200:
		if code != 200 {
			return false, s
		}
		switch op.Kind {
		case Register, DelSvc:
			return r.Image == img, next
		default:
			return r.Ctr == ctr, next
		}
	}
	return false, s
}

// Model is the registry's model for porcupine, partitioned by group and,
// when etcd was restored, by epoch.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		type part struct{ epoch, group int }
		by := map[part][]porcupine.Operation{}
		var groups []part
		for _, o := range history {
			op := o.Input.(Op)
			g := part{op.Epoch, op.Group}
			if _, ok := by[g]; !ok {
				groups = append(groups, g)
			}
			by[g] = append(by[g], o)
		}
		out := make([][]porcupine.Operation, 0, len(groups))
		for _, g := range groups {
			out = append(out, by[g])
		}
		return out
	},
	Init: func() any { return State{} },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(State), input.(Op), output.(Result))
	},
	Equal: func(a, b any) bool { return a.(State) == b.(State) },
	DescribeOperation: func(input, output any) string {
		op, r := input.(Op), output.(Result)
		if op.Kind == Read || op.Kind == Restored {
			return fmt.Sprintf("%s -> %s", op, r.State)
		}
		switch op.Kind {
		case Register, DelSvc:
			if r.Code == 200 {
				return fmt.Sprintf("%s -> 200 %s", op, r.Image)
			}
		case Put, Patch, DelCtr:
			if r.Code == 200 {
				return fmt.Sprintf("%s -> 200 %s", op, r.Ctr)
			}
		}
		return fmt.Sprintf("%s -> %s", op, r)
	},
	DescribeState: func(state any) string { return state.(State).String() },
}
