package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The device's own programs share the agent's connection, in process through
// Daemon.Publish and Daemon.Subscribe, or from other processes through the
// agent's local socket (DialAgent). Either way their subscriptions are
// multiplexed by a router: one MQTT subscription per filter however many
// programs asked, restored on every new connection, and never in the way of
// the agent's own topics.

// reservedPrefixes are the topics the agent uses itself: a program that
// published there could answer a rotation job or request certificates in the
// device's name, and one that subscribed to the same filter as the agent
// would replace the agent's own handler.
func reservedPrefixes(thing string) []string {
	return []string{"$aws/certificates/", "$aws/provisioning-templates/", "$aws/things/" + thing + "/jobs/"}
}

// ErrReservedTopic: a device program asked for one of the agent's own topics.
var ErrReservedTopic = errors.New("topic reserved for the agent")

func checkProgramTopic(thing, topic string, filter bool) error {
	if err := validateTopic(topic, filter); err != nil {
		return err
	}
	for _, p := range reservedPrefixes(thing) {
		if strings.HasPrefix(topic, p) {
			return fmt.Errorf("agent: %q: %w (certificates, provisioning and jobs under %s are the agent's own)", topic, ErrReservedTopic, p)
		}
	}
	return nil
}

// router multiplexes the programs' subscriptions onto the device's client.
type router struct {
	log *slog.Logger

	mu     sync.Mutex
	client *Client
	routes map[string]*programRoute
	next   uint64
}

type programRoute struct {
	qos  QoS
	subs map[uint64]MessageHandler
}

func newRouter(log *slog.Logger) *router {
	return &router{log: log, routes: map[string]*programRoute{}}
}

func (r *router) dispatch(filter string) MessageHandler {
	return func(m Message) {
		r.mu.Lock()
		rt := r.routes[filter]
		var hs []MessageHandler
		if rt != nil {
			for _, h := range rt.subs {
				hs = append(hs, h)
			}
		}
		r.mu.Unlock()
		for _, h := range hs {
			h(m)
		}
	}
}

// add registers h for filter, subscribing on the client if the filter is new
// (or needs a higher QoS). Without a client yet it is subscribed on attach.
func (r *router) add(ctx context.Context, filter string, qos QoS, h MessageHandler) (uint64, error) {
	r.mu.Lock()
	rt := r.routes[filter]
	fresh := rt == nil
	if fresh {
		rt = &programRoute{qos: qos, subs: map[uint64]MessageHandler{}}
		r.routes[filter] = rt
	}
	higher := qos > rt.qos
	if higher {
		rt.qos = qos
	}
	r.next++
	id := r.next
	rt.subs[id] = h
	cl := r.client
	r.mu.Unlock()
	r.log.Debug("program subscription", "filter", filter, "qos", qos, "new_filter", fresh, "connected", cl != nil)
	if cl != nil && (fresh || higher) {
		if err := cl.Subscribe(ctx, filter, qos, r.dispatch(filter)); err != nil {
			r.remove(context.WithoutCancel(ctx), filter, id)
			return 0, err
		}
	}
	return id, nil
}

// remove drops one handler, unsubscribing the filter when it was the last.
func (r *router) remove(ctx context.Context, filter string, id uint64) {
	r.mu.Lock()
	rt := r.routes[filter]
	if rt == nil {
		r.mu.Unlock()
		return
	}
	delete(rt.subs, id)
	last := len(rt.subs) == 0
	if last {
		delete(r.routes, filter)
	}
	cl := r.client
	r.mu.Unlock()
	if last && cl != nil {
		uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := cl.Unsubscribe(uctx, filter); err != nil {
			r.log.Debug("unsubscribing a program's filter", "filter", filter, "error", err)
		}
	}
}

// attach subscribes every filter on a new client.
func (r *router) attach(ctx context.Context, cl *Client) {
	r.mu.Lock()
	r.client = cl
	routes := make(map[string]QoS, len(r.routes))
	for f, rt := range r.routes {
		routes[f] = rt.qos
	}
	r.mu.Unlock()
	r.log.Debug("restoring program subscriptions on a new connection", "filters", len(routes))
	for f, q := range routes {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := cl.Subscribe(sctx, f, q, r.dispatch(f)); err != nil {
			r.log.Warn("restoring a program's subscription", "filter", f, "error", err)
		}
		cancel()
	}
}

func (r *router) detach() {
	r.mu.Lock()
	r.client = nil
	r.mu.Unlock()
}

// WaitConnected waits until the device's own identity has connected once
// (after provisioning, on a new device).
func (d *Daemon) WaitConnected(ctx context.Context) error {
	select {
	case <-d.deviceUp:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent: waiting for the device to connect: %w", context.Cause(ctx))
	}
}

// Publish publishes on the agent's connection for one of the device's own
// programs. It waits for the connection (a new device provisions first) up
// to ctx; with QoS 1 it returns once the broker acknowledged. The agent's own
// topics (certificates, provisioning, the thing's jobs) are refused.
func (d *Daemon) Publish(ctx context.Context, topic string, qos QoS, payload []byte) error {
	if err := checkProgramTopic(d.cfg().ThingName, topic, false); err != nil {
		return err
	}
	if err := d.WaitConnected(ctx); err != nil {
		return err
	}
	for {
		err := d.currentSession().Publish(ctx, topic, qos, payload)
		if !errors.Is(err, ErrNotConnected) {
			return err
		}
		// The connection is being replaced (a reload changed the endpoint).
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Subscribe subscribes one of the device's own programs to a topic filter on
// the agent's connection; the subscription survives reconnects, rotations and
// reloads until the returned function ends it. Before the device has
// connected the subscription is recorded and made once it does. The agent's
// own topics are refused.
func (d *Daemon) Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) (unsubscribe func(), err error) {
	if err := checkProgramTopic(d.cfg().ThingName, filter, true); err != nil {
		return nil, err
	}
	if qos > AtLeastOnce {
		return nil, fmt.Errorf("agent: QoS %d: AWS IoT supports QoS 0 and 1", qos)
	}
	if h == nil {
		return nil, errors.New("agent: Subscribe without a handler")
	}
	id, err := d.router.add(ctx, filter, qos, h)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() { d.router.remove(context.Background(), filter, id) })
	}, nil
}

// LocalStatus is what a device program may ask the agent about its identity.
type LocalStatus struct {
	ThingName     string    `json:"thing_name"`
	ClientID      string    `json:"client_id"`
	Connection    string    `json:"connection"`
	Connected     bool      `json:"connected"`
	CertificateID string    `json:"certificate_id,omitempty"`
	NotAfter      time.Time `json:"not_after,omitzero"`
	Rotating      bool      `json:"rotating"`
}

// Status is the agent's identity and connection in brief.
func (d *Daemon) Status() LocalStatus {
	cfg := d.cfg()
	d.mu.Lock()
	state := d.connState
	d.mu.Unlock()
	s := LocalStatus{ThingName: cfg.ThingName, ClientID: cfg.ClientID, Connection: state.String(),
		Connected: state == StateConnected && d.deviceConnected()}
	if r := d.currentRunner(); r == nil {
		return s
	} else if st, err := r.Load(); err == nil && st.Current != nil {
		s.CertificateID, s.NotAfter, s.Rotating = st.Current.CertificateID, st.Current.NotAfter, st.InProgress()
	}
	return s
}

// localFrame is one line of the local socket protocol, JSON, in either
// direction. Requests carry an ID and an Op (publish, subscribe, unsubscribe,
// status); each gets a reply with the same ID and Error set if it failed.
// Messages for a subscription come as Op "message" with the Filter they
// matched.
type localFrame struct {
	ID       uint64       `json:"id,omitempty"`
	Op       string       `json:"op,omitempty"`
	Topic    string       `json:"topic,omitempty"`
	Filter   string       `json:"filter,omitempty"`
	QoS      QoS          `json:"qos,omitempty"`
	Payload  []byte       `json:"payload,omitempty"`
	Retained bool         `json:"retained,omitempty"`
	Error    string       `json:"error,omitempty"`
	Status   *LocalStatus `json:"status,omitempty"`
}

// DefaultSocket is where `thingcert run` listens under systemd (its
// RuntimeDirectory).
const DefaultSocket = "/run/thingcert/agent.sock"

// listenLocal listens on a Unix socket, replacing a stale one left by a
// daemon that was killed (one that answers is left alone). The socket is
// 0660: the agent's group may use it (the systemd unit's RuntimeDirectory is
// 0750 for the same group).
func listenLocal(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("agent: socket %s is in use by another agent", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: removing the stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("agent: local socket: %w", err)
	}
	return l, nil
}

// serveLocal serves device programs on l until ctx ends.
func (d *Daemon) serveLocal(ctx context.Context, l net.Listener) {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("local socket stopped", "error", err)
			}
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.serveProgram(ctx, c)
		}()
	}
}

// serveProgram serves one program's connection.
func (d *Daemon) serveProgram(ctx context.Context, c net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log := d.log.With("program", peerName(c))
	log.Debug("program connected")

	out := make(chan localFrame, 256)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		enc := json.NewEncoder(c)
		for {
			select {
			case <-ctx.Done():
				return
			case f := <-out:
				if err := enc.Encode(f); err != nil {
					cancel()
					return
				}
			}
		}
	}()
	reply := func(f localFrame) {
		select {
		case out <- f:
		case <-ctx.Done():
		}
	}
	var mu sync.Mutex
	subs := map[string]func(){}
	defer func() {
		mu.Lock()
		for _, u := range subs {
			u()
		}
		mu.Unlock()
		cancel()
		wg.Wait()
		log.Debug("program disconnected")
	}()

	var dropped atomic.Int64
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64*1024), 512*1024) // AWS IoT's 128 KiB payload, base64 and JSON around it
	for sc.Scan() {
		var req localFrame
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			reply(localFrame{Error: "agent: not a request: " + err.Error()})
			continue
		}
		switch req.Op {
		case "publish":
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := localFrame{ID: req.ID}
				if err := d.Publish(ctx, req.Topic, req.QoS, req.Payload); err != nil {
					f.Error = err.Error()
				}
				reply(f)
			}()
		case "subscribe":
			filter := req.Filter
			u, err := d.Subscribe(ctx, filter, req.QoS, func(m Message) {
				select {
				case out <- localFrame{Op: "message", Filter: filter, Topic: m.Topic, QoS: m.QoS, Payload: m.Payload, Retained: m.Retained}:
				default:
					// A program that does not read must not stall the
					// connection every program shares.
					if n := dropped.Add(1); n == 1 || n%100 == 0 {
						log.Warn("program is not reading; messages dropped", "dropped", n, "filter", filter)
					}
				}
			})
			f := localFrame{ID: req.ID}
			if err != nil {
				f.Error = err.Error()
			} else {
				mu.Lock()
				if prev := subs[filter]; prev != nil {
					prev()
				}
				subs[filter] = u
				mu.Unlock()
			}
			reply(f)
		case "unsubscribe":
			mu.Lock()
			if u := subs[req.Filter]; u != nil {
				u()
				delete(subs, req.Filter)
			}
			mu.Unlock()
			reply(localFrame{ID: req.ID})
		case "status":
			s := d.Status()
			reply(localFrame{ID: req.ID, Status: &s})
		default:
			reply(localFrame{ID: req.ID, Error: fmt.Sprintf("agent: unknown operation %q", req.Op)})
		}
	}
}

// peerName names the program on the other end, by its process when the
// kernel says (SO_PEERCRED), for the log.
func peerName(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c.RemoteAddr().String()
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unknown"
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cred == nil {
		return "unknown"
	}
	return fmt.Sprintf("pid %d uid %d", cred.Pid, cred.Uid)
}
