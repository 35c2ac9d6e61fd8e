package agentclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeAgent serves one connection on a Unix socket with a script: for each
// request it reads, answer returns the lines to send back.
func fakeAgent(t *testing.T, answer func(req Frame) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req Frame
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return
			}
			for _, line := range answer(req) {
				if _, err := c.Write([]byte(line + "\n")); err != nil {
					return
				}
			}
		}
	}()
	return path
}

func reply(f Frame) string {
	b, _ := json.Marshal(f)
	return string(b)
}

func hello(req Frame) []string {
	return []string{reply(Frame{ID: req.ID, Op: OpHello, Version: ProtocolVersion})}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestDialSaysHelloAndMapsErrorCodes(t *testing.T) {
	var sawHello bool
	path := fakeAgent(t, func(req Frame) []string {
		switch req.Op {
		case OpHello:
			sawHello = req.Version == ProtocolVersion
			return hello(req)
		case OpPublish:
			return []string{reply(Frame{ID: req.ID, Error: "agent: \"$aws/things/x/jobs/a\": topic reserved", Code: CodeReservedTopic})}
		case OpSubscribe:
			return []string{reply(Frame{ID: req.ID, Error: "agent: busy", Code: CodeBusy})}
		}
		return []string{reply(Frame{ID: req.ID})}
	})
	c, err := Dial(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !sawHello {
		t.Fatal("the agent got no hello with the protocol version")
	}
	if err := c.Publish(ctx(t), "$aws/things/x/jobs/a", AtLeastOnce, []byte("x")); !errors.Is(err, ErrReservedTopic) {
		t.Errorf("reserved topic: %v", err)
	}
	if err := c.Subscribe(ctx(t), "a/#", AtLeastOnce, func(Message) {}); !errors.Is(err, ErrBusy) {
		t.Errorf("busy: %v", err)
	}
	if err := c.Publish(ctx(t), "a", AtMostOnce, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized payload: %v", err)
	}
}

func TestDialRefusesAnotherVersion(t *testing.T) {
	path := fakeAgent(t, func(req Frame) []string {
		return []string{reply(Frame{ID: req.ID, Op: OpHello, Version: ProtocolVersion + 1})}
	})
	if _, err := Dial(ctx(t), path); !errors.Is(err, ErrVersion) {
		t.Fatalf("Dial against version %d: %v", ProtocolVersion+1, err)
	}
}

// TestUnknownFrameIsReported: a frame the client cannot place is a protocol
// error it reports, never a silent drop.
func TestUnknownFrameIsReported(t *testing.T) {
	for name, bad := range map[string]string{
		"unknown op":       `{"op":"shadow-delta","topic":"x"}`,
		"not json":         `{"op":`,
		"reply to nothing": `{"id":999}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := fakeAgent(t, func(req Frame) []string {
				if req.Op == OpHello {
					return hello(req)
				}
				return []string{bad}
			})
			c, err := Dial(ctx(t), path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Status(ctx(t)); !errors.Is(err, ErrProtocol) {
				t.Errorf("Status: %v, want ErrProtocol", err)
			}
			<-c.Done()
			if !errors.Is(c.Err(), ErrProtocol) {
				t.Errorf("Err() = %v, want ErrProtocol", c.Err())
			}
		})
	}
}

func TestMessagesReachTheirHandler(t *testing.T) {
	path := fakeAgent(t, func(req Frame) []string {
		switch req.Op {
		case OpHello:
			return hello(req)
		case OpSubscribe:
			return []string{reply(Frame{ID: req.ID}), reply(Frame{Op: OpMessage, Filter: req.Filter, Topic: "cmd/x/led", QoS: AtLeastOnce, Payload: []byte("on")})}
		}
		return nil
	})
	c, err := Dial(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan Message, 1)
	if err := c.Subscribe(ctx(t), "cmd/x/#", AtLeastOnce, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic != "cmd/x/led" || string(m.Payload) != "on" {
			t.Errorf("message %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
}
