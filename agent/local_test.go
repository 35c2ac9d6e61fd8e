package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/emulator"
)

// rawProgram speaks the socket's wire format by hand, as a program in another
// language would.
type rawProgram struct {
	t  *testing.T
	c  net.Conn
	sc *bufio.Scanner
}

func dialRaw(t *testing.T, socket string) *rawProgram {
	t.Helper()
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ { // the socket appears once the agent has started
		if c, err = net.Dial("unix", socket); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawProgram{t: t, c: c, sc: bufio.NewScanner(c)}
}

func (p *rawProgram) send(f agentclient.Frame) {
	p.t.Helper()
	b, _ := json.Marshal(f)
	if _, err := p.c.Write(append(b, '\n')); err != nil {
		p.t.Fatal(err)
	}
}

// read returns the next frame, or false when the agent closed the connection.
func (p *rawProgram) read() (agentclient.Frame, bool) {
	p.t.Helper()
	p.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if !p.sc.Scan() {
		return agentclient.Frame{}, false
	}
	var f agentclient.Frame
	if err := json.Unmarshal(p.sc.Bytes(), &f); err != nil {
		p.t.Fatalf("agent sent %q: %v", p.sc.Bytes(), err)
	}
	return f, true
}

// TestLocalSocketWantsHello: a program that does not say which protocol it
// speaks is refused and disconnected.
func TestLocalSocketWantsHello(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	d.run(agent.DaemonOptions{})
	p := dialRaw(t, d.socket)
	p.send(agentclient.Frame{ID: 1, Op: agentclient.OpStatus})
	if f, open := p.read(); !open || f.ID != 1 || f.Code != agentclient.CodeVersion {
		t.Fatalf("status before hello: %+v (open %v)", f, open)
	}
	if f, open := p.read(); open {
		t.Fatalf("connection left open after a refused request: %+v", f)
	}
	p = dialRaw(t, d.socket)
	p.send(agentclient.Frame{ID: 1, Op: agentclient.OpHello, Version: 99})
	if f, _ := p.read(); f.Code != agentclient.CodeVersion {
		t.Fatalf("hello with version 99: %+v", f)
	}
}

// TestLocalSocketBoundsPublishes: publishes waiting for a connection that
// does not come are bounded per program; past the bound the agent answers
// busy at once, and payloads over AWS IoT's limit are refused.
func TestLocalSocketBoundsPublishes(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	cfg := d.config()
	cfg.Address = "127.0.0.1:" + strconv.Itoa(freePort(t)) // never connects
	d.run(agent.DaemonOptions{Settings: settingsOf(t, cfg)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dialRaw(t, d.socket) // waits for the socket
	c, err := agentclient.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Publish(ctx, "dt/x", agentclient.AtLeastOnce, make([]byte, agentclient.MaxPayload+1)); !errors.Is(err, agentclient.ErrTooLarge) {
		t.Fatalf("oversized publish: %v", err)
	}
	p := dialRaw(t, d.socket)
	p.send(agentclient.Frame{ID: 1, Op: agentclient.OpHello, Version: agentclient.ProtocolVersion})
	if f, _ := p.read(); f.Op != agentclient.OpHello {
		t.Fatalf("hello: %+v", f)
	}
	big := make([]byte, agentclient.MaxPayload+1)
	p.send(agentclient.Frame{ID: 2, Op: agentclient.OpPublish, Topic: "dt/x", Payload: big})
	if f, _ := p.read(); f.ID != 2 || f.Code != agentclient.CodeTooLarge {
		t.Fatalf("oversized publish on the wire: %+v", f)
	}
	const n = 40
	for i := 0; i < n; i++ {
		p.send(agentclient.Frame{ID: uint64(100 + i), Op: agentclient.OpPublish, Topic: "dt/x", QoS: 1, Payload: []byte("x")})
	}
	busy := 0
	for busy < n-32 {
		f, open := p.read()
		if !open {
			t.Fatal("the agent closed the connection")
		}
		if f.Code != agentclient.CodeBusy {
			t.Fatalf("answer before the connection exists: %+v", f)
		}
		busy++
	}
	// The 32 in flight still wait; a status request is answered meanwhile.
	p.send(agentclient.Frame{ID: 7, Op: agentclient.OpStatus})
	if f, _ := p.read(); f.ID != 7 || f.Status == nil || f.Status.Connected {
		t.Fatalf("status while publishes wait: %+v", f)
	}
}
