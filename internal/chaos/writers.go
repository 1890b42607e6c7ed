// The writers: clients on every node sending random operations and
// recording each with its invoke and return times.

package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
)

// record appends a finished operation to the history.
func (r *run) record(client int, op Op, res Result, call, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: op, Call: call, Output: res, Return: ret})
	if op.Mark != 0 {
		r.markCall[op.Mark] = call
	}
	if op.Kind != Read && res.Code == 0 {
		r.unknown = append(r.unknown, len(r.ops)-1)
	}
}

// writer sends random writes to one node, one at a time, until deadline;
// id is its row in the visualization.
func (r *run) writer(id int, n *node, backend int, rng *rand.Rand, deadline time.Time) {
	backoff := time.Duration(0) // after unknown answers, as an orchestrator backs off
	for time.Now().Before(deadline) {
		op := randomOp(rng, r.cfg.Groups)
		op.Node, op.Mark = n.name, r.lastMark.Add(1)
		call := r.now()
		res, sent := send(n, op, backend)
		if sent {
			r.record(id, op, res, call, r.now())
		}
		wait := time.Duration(rng.Int64N(int64(r.cfg.Think) + 1))
		if res.Code == 0 {
			// etcd or the node is down: back off, 200 ms doubling to 2 s,
			// as an orchestrator retries; every unknown write is one more
			// for porcupine to place anywhere after its call
			backoff = min(max(2*backoff, 200*time.Millisecond), 2*time.Second)
			wait += backoff
		} else {
			backoff = 0
		}
		time.Sleep(wait) // the workload's think time
	}
}

func randomOp(rng *rand.Rand, groups int) Op {
	op := Op{Group: rng.IntN(groups), Slot: rng.IntN(ImagesPerGroup), Ctr: rng.IntN(Containers), Weight: -1}
	status := func() uint8 {
		if rng.IntN(4) == 0 {
			return draining
		}
		return healthy
	}
	switch x := rng.IntN(100); {
	case x < 14:
		op.Kind = Register
		op.Claim = rng.IntN(2) == 0
		for c := range op.Ctrs {
			if rng.IntN(2) == 0 {
				op.Ctrs[c] = Ctr{Present: true, Weight: 1 + rng.IntN(9), Status: status()}
			}
		}
	case x < 44:
		op.Kind, op.Weight, op.Status = Put, 1+rng.IntN(9), status()
	case x < 72:
		op.Kind = Patch
		switch rng.IntN(3) {
		case 0:
			op.Weight = rng.IntN(10)
		case 1:
			op.Status = status()
		default:
			op.Weight, op.Status = rng.IntN(10), status()
		}
	case x < 92:
		op.Kind = DelCtr
	default:
		op.Kind = DelSvc
	}
	return op
}

// send makes op's request to the node and reads its answer; sent is false
// when the node refused the connection (it is dead: nothing was asked).
func send(n *node, op Op, backend int) (res Result, sent bool) {
	img := ImageID(op.Group, op.Slot)
	svc := fmt.Sprintf("%s/services/%d", n.adm, img)
	ctr := fmt.Sprintf("%s/containers/c%d", svc, op.Ctr)
	var method, target string
	var body any
	switch op.Kind {
	case Register:
		method, target = "POST", fmt.Sprintf("%s/register?image_name=img-%d", svc, img)
		if op.Claim {
			target += fmt.Sprintf("&external_port=%d", GroupPort(op.Group))
		}
		cs := []map[string]any{}
		for i, c := range op.Ctrs {
			if c.Present {
				cs = append(cs, map[string]any{"container_id": fmt.Sprintf("c%d", i), "port": backend,
					"weight": c.Weight, "status": statusNames[c.Status], "cpu_usage": op.Mark})
			}
		}
		body = cs
	case Put:
		method, target = "PUT", ctr
		body = map[string]any{"port": backend, "weight": op.Weight, "status": statusNames[op.Status], "cpu_usage": op.Mark}
	case Patch:
		method, target = "PATCH", ctr
		p := map[string]any{"cpu_usage": op.Mark}
		if op.Weight >= 0 {
			p["weight"] = op.Weight
		}
		if op.Status != noStatus {
			p["status"] = statusNames[op.Status]
		}
		body = p
	case DelCtr:
		method, target = "DELETE", ctr
	case DelSvc:
		method, target = "DELETE", svc
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, target, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return Result{}, false
	}
	if err != nil {
		return Result{Detail: err.Error()}, true
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e struct {
		Detail any `json:"detail"`
	}
	json.Unmarshal(data, &e)
	detail := fmt.Sprint(e.Detail)
	switch resp.StatusCode {
	case 200:
		res := Result{Code: 200}
		switch op.Kind {
		case Register, DelSvc:
			var s svcJSON
			if json.Unmarshal(data, &s) != nil || s.ImageID != img {
				res.Image = Image{Odd: true}
			} else {
				res.Image = s.image(op.Group)
			}
		default:
			var c ctrJSON
			if json.Unmarshal(data, &c) != nil || c.ID != fmt.Sprintf("c%d", op.Ctr) {
				res.Ctr = Ctr{Present: true, Status: 255}
			} else {
				res.Ctr = c.ctr()
			}
		}
		return res, true
	case 404:
		return Result{Code: 404, Detail: detail}, true
	case 409:
		return Result{Code: 409, PortConflict: strings.Contains(detail, "already mapped"), Detail: detail}, true
	}
	return Result{Detail: fmt.Sprintf("%d %s", resp.StatusCode, detail)}, true
}
