package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/iot"
)

// The device's own programs share the agent's connection, in process through
// Daemon.Publish and Daemon.Subscribe, or from other processes through the
// agent's local socket (package agentclient). Either way their subscriptions are
// multiplexed by a router: one MQTT subscription per filter however many
// programs asked, restored on every new connection, and never in the way of
// the agent's own topics.

// reservedTopics are the topics the agent uses itself, each with every topic
// below it: a program that published there could answer a rotation job or
// request certificates in the device's name, one that subscribed there would
// see job documents, client tokens and certificates, and one that subscribed
// to the same filter as the agent would replace the agent's own handler.
// extra are the owner CA issuer's request and response topics
// (Settings.ReservedTopics).
func reservedTopics(thing string, extra []string) []string {
	out := []string{"$aws/certificates", "$aws/provisioning-templates", "$aws/things/" + thing + "/jobs"}
	for _, t := range extra {
		if t = strings.ReplaceAll(t, "{thing}", thing); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// ErrReservedTopic: a device program asked for one of the agent's own
// topics. It is the local socket's error too, so programs on either side of
// the socket test for the same sentinel.
var ErrReservedTopic = agentclient.ErrReservedTopic

// ErrTooManySubscriptions: the programs hold maxProgramFilters filters.
var ErrTooManySubscriptions = agentclient.ErrTooManySubscriptions

// maxProgramFilters bounds the distinct filters the programs may hold on the
// agent's connection. AWS IoT allows 50 subscriptions per connection; the
// agent keeps 10 for its own (jobs, provisioning, certificates, an issuer),
// so that no program can make the agent's SUBACK fail, which would read as a
// policy refusal.
const maxProgramFilters = 40

// checkProgramTopic refuses a topic (or, with filter, a topic filter) that
// is, or can match, one of the reserved topics or any topic below one.
func checkProgramTopic(thing string, extra []string, topic string, filter bool) error {
	if err := iot.ValidateTopic(topic, filter); err != nil {
		return err
	}
	for _, r := range reservedTopics(thing, extra) {
		if canMatchBelow(topic, r) {
			what := "topic"
			if filter && strings.ContainsAny(topic, "+#") {
				what = "filter, which can match"
			}
			return fmt.Errorf("agent: %q: %w (the %s %s and the topics below it: certificates, provisioning, the owner CA's issuer and the thing's jobs are the agent's own)", topic, ErrReservedTopic, what, r)
		}
	}
	return nil
}

// canMatchBelow reports whether the MQTT topic filter f matches topic t or
// some topic below it (t/...). As MQTT 3.1.1 (4.7.2) says, a filter whose
// first level is a wildcard does not match a topic starting with '$'.
func canMatchBelow(f, t string) bool {
	fl, tl := strings.Split(f, "/"), strings.Split(t, "/")
	dollar := strings.HasPrefix(t, "$")
	for i, l := range fl {
		switch {
		case l == "#":
			return !(i == 0 && dollar)
		case i >= len(tl):
			// The filter goes on below t: some topic below t matches it.
			return true
		case l == "+":
			if i == 0 && dollar {
				return false
			}
		case l != tl[i]:
			return false
		}
	}
	// The filter ends at or above t's depth: it matches t itself or nothing
	// below it.
	return len(fl) == len(tl)
}

// router multiplexes the programs' subscriptions onto the device's client.
type router struct {
	log *slog.Logger

	mu     sync.Mutex
	client *iot.Client
	routes map[string]*programRoute
	next   uint64
}

type programRoute struct {
	qos  iot.QoS
	subs map[uint64]iot.MessageHandler
}

func newRouter(log *slog.Logger) *router {
	return &router{log: log, routes: map[string]*programRoute{}}
}

func (r *router) dispatch(filter string) iot.MessageHandler {
	return func(m iot.Message) {
		r.mu.Lock()
		rt := r.routes[filter]
		var hs []iot.MessageHandler
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
func (r *router) add(ctx context.Context, filter string, qos iot.QoS, h iot.MessageHandler) (uint64, error) {
	r.mu.Lock()
	rt := r.routes[filter]
	fresh := rt == nil
	if fresh && len(r.routes) >= maxProgramFilters {
		r.mu.Unlock()
		return 0, fmt.Errorf("agent: %q: %w: the device's programs hold %d topic filters, the most the agent allows (AWS IoT allows 50 subscriptions per connection and the agent keeps the rest for its own); unsubscribe from one, or cover several topics with one wildcard filter",
			filter, ErrTooManySubscriptions, maxProgramFilters)
	}
	if fresh {
		rt = &programRoute{qos: qos, subs: map[uint64]iot.MessageHandler{}}
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
func (r *router) attach(ctx context.Context, cl *iot.Client) {
	r.mu.Lock()
	r.client = cl
	routes := make(map[string]iot.QoS, len(r.routes))
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
func (d *Daemon) Publish(ctx context.Context, topic string, qos iot.QoS, payload []byte) error {
	set := d.settings()
	if err := checkProgramTopic(set.Device.ThingName, set.ReservedTopics, topic, false); err != nil {
		return err
	}
	if err := d.WaitConnected(ctx); err != nil {
		return err
	}
	for {
		err := d.currentSession().Publish(ctx, topic, qos, payload)
		if !errors.Is(err, iot.ErrNotConnected) {
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
func (d *Daemon) Subscribe(ctx context.Context, filter string, qos iot.QoS, h iot.MessageHandler) (unsubscribe func(), err error) {
	set := d.settings()
	if err := checkProgramTopic(set.Device.ThingName, set.ReservedTopics, filter, true); err != nil {
		return nil, err
	}
	if qos > iot.AtLeastOnce {
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

// Status is the agent's identity and connection in brief, as a device
// program sees it.
func (d *Daemon) Status() agentclient.Status {
	set := d.settings()
	d.mu.Lock()
	state := d.connState
	mgr := d.mgr
	d.mu.Unlock()
	s := agentclient.Status{ThingName: set.Device.ThingName, ClientID: set.Device.ClientID, Connection: state.String(),
		Connected: state == iot.StateConnected && d.deviceConnected()}
	if mgr == nil {
		return s
	}
	if st, err := mgr.Runner().Load(); err == nil && st.Current != nil {
		s.CertificateID, s.NotAfter, s.Rotating = st.Current.CertificateID, st.Current.NotAfter, st.InProgress()
	}
	return s
}

// Bounds on the publishes programs have in flight (each may wait for the
// connection, holding its payload): a program that floods the socket gets
// "busy" answers instead of growing the agent's memory without end.
const (
	maxInflightPerProgram = 32
	maxInflight           = 256
)

// listenLocal listens on a Unix socket, replacing a stale one left by a
// daemon that was killed (one that answers is left alone; anything at the
// path that is not a socket is refused, never deleted). The socket is made in
// a private folder beside path, given mode 0660 there (the agent's group may
// use it: the systemd unit's RuntimeDirectory is 0750 for the same group) and
// renamed into place, so that no program connects before its mode is right
// and the process umask, shared by every goroutine, is never changed.
func listenLocal(path, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("agent: socket group %q: %w: create it (packaging/sysusers.conf does) or name another", group, err)
		}
		gid = g
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("agent: socket %s is in use by another agent", path)
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("agent: %s exists and is not a socket (%s): move it away, or give the agent another socket path", path, describeMode(fi.Mode()))
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("agent: local socket: %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".agent-sock-")
	if err != nil {
		return nil, fmt.Errorf("agent: local socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("agent: local socket: %w", err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // it moves: Close removes it at its final path
	if err := os.Chmod(tmp, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("agent: local socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("agent: giving the local socket %s to group %q: %w (the agent must be a member of the group: systemd SupplementaryGroups=)", path, group, err)
		}
	}
	// A stale socket is replaced by the rename, atomically.
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("agent: placing the local socket at %s: %w", path, err)
	}
	return &placedSocket{UnixListener: ul, path: path}, nil
}

// placedSocket removes its socket file on Close, at the path it was moved to.
type placedSocket struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (p *placedSocket) Close() error {
	err := p.UnixListener.Close()
	p.once.Do(func() { _ = os.Remove(p.path) })
	return err
}

// lookupGroup is a group's ID, by name or number.
func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a folder"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return m.Type().String()
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

	// sent, when set, is closed once the frame is written (a last answer
	// before the agent hangs up must reach the program).
	type outFrame struct {
		f    agentclient.Frame
		sent chan struct{}
	}
	out := make(chan outFrame, 256)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		enc := json.NewEncoder(c)
		for {
			select {
			case <-ctx.Done():
				return
			case of := <-out:
				err := enc.Encode(of.f)
				if of.sent != nil {
					close(of.sent)
				}
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()
	reply := func(f agentclient.Frame) {
		select {
		case out <- outFrame{f: f}:
		case <-ctx.Done():
		}
	}
	// replyLast answers and waits until the answer is written, before the
	// connection is closed.
	replyLast := func(f agentclient.Frame) {
		sent := make(chan struct{})
		select {
		case out <- outFrame{f: f, sent: sent}:
			select {
			case <-sent:
			case <-ctx.Done():
			}
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

	fail := func(id uint64, err error) agentclient.Frame {
		return agentclient.Frame{ID: id, Error: err.Error(), Code: agentclient.CodeOf(err)}
	}
	var dropped atomic.Int64
	var inflight atomic.Int64 // this program's publishes in flight
	hello := false
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64*1024), 512*1024) // AWS IoT's 128 KiB payload, base64 and JSON around it
	for sc.Scan() {
		var req agentclient.Frame
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			reply(agentclient.Frame{Error: "agent: not a request: " + err.Error(), Code: agentclient.CodeBadRequest})
			continue
		}
		if !hello && req.Op != agentclient.OpHello {
			// Without a hello the agent cannot know which protocol the
			// program speaks: refuse rather than guess.
			replyLast(agentclient.Frame{ID: req.ID, Error: `agent: say hello first ({"op":"hello","version":1})`, Code: agentclient.CodeVersion})
			return
		}
		switch req.Op {
		case agentclient.OpHello:
			if req.Version != agentclient.ProtocolVersion {
				replyLast(fail(req.ID, fmt.Errorf("agent: protocol version %d: %w (this agent speaks %d)", req.Version, agentclient.ErrVersion, agentclient.ProtocolVersion)))
				return
			}
			hello = true
			reply(agentclient.Frame{ID: req.ID, Op: agentclient.OpHello, Version: agentclient.ProtocolVersion})
		case agentclient.OpPublish:
			if len(req.Payload) > agentclient.MaxPayload {
				reply(fail(req.ID, fmt.Errorf("agent: publishing %d bytes to %q: %w (AWS IoT's limit is %d)", len(req.Payload), req.Topic, agentclient.ErrTooLarge, agentclient.MaxPayload)))
				continue
			}
			if inflight.Load() >= maxInflightPerProgram || d.inflight.Load() >= maxInflight {
				reply(fail(req.ID, fmt.Errorf("agent: %d publishes of this program in flight: %w", inflight.Load(), agentclient.ErrBusy)))
				continue
			}
			inflight.Add(1)
			d.inflight.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer inflight.Add(-1)
				defer d.inflight.Add(-1)
				f := agentclient.Frame{ID: req.ID}
				if err := d.Publish(ctx, req.Topic, iot.QoS(req.QoS), req.Payload); err != nil {
					f = fail(req.ID, err)
				}
				reply(f)
			}()
		case agentclient.OpSubscribe:
			filter := req.Filter
			u, err := d.Subscribe(ctx, filter, iot.QoS(req.QoS), func(m iot.Message) {
				select {
				case out <- outFrame{f: agentclient.Frame{Op: agentclient.OpMessage, Filter: filter, Topic: m.Topic, QoS: agentclient.QoS(m.QoS), Payload: m.Payload, Retained: m.Retained}}:
				default:
					// A program that does not read must not stall the
					// connection every program shares.
					if n := dropped.Add(1); n == 1 || n%100 == 0 {
						log.Warn("program is not reading; messages dropped", "dropped", n, "filter", filter)
					}
				}
			})
			f := agentclient.Frame{ID: req.ID}
			if err != nil {
				f = fail(req.ID, err)
			} else {
				mu.Lock()
				if prev := subs[filter]; prev != nil {
					prev()
				}
				subs[filter] = u
				mu.Unlock()
			}
			reply(f)
		case agentclient.OpUnsubscribe:
			mu.Lock()
			if u := subs[req.Filter]; u != nil {
				u()
				delete(subs, req.Filter)
			}
			mu.Unlock()
			reply(agentclient.Frame{ID: req.ID})
		case agentclient.OpStatus:
			s := d.Status()
			reply(agentclient.Frame{ID: req.ID, Status: &s})
		default:
			reply(agentclient.Frame{ID: req.ID, Error: fmt.Sprintf("agent: unknown operation %q", req.Op), Code: agentclient.CodeBadRequest})
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
