package emulator

import (
	"bytes"
	"fmt"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Fault changes the emulator's answer to device requests on one topic, to
// test how a device copes with a bad or missing answer: a certificate that is
// not what it asked for, garbage, a /rejected or throttling answer, no answer,
// or a connection that drops after the request was processed.
type Fault struct {
	// Topic is the request topic (the one the device publishes to, e.g.
	// "$aws/certificates/create-from-csr/json"); a trailing "#" matches every
	// topic with that prefix.
	Topic string
	// Times is how many answers it changes; zero: every one until removed.
	Times int
	// Drop sends no answer at all.
	Drop bool
	// Disconnect closes the device's connection instead of answering: the
	// request was carried out (a certificate created, a job updated) but the
	// device never hears of it.
	Disconnect bool
	// Rewrite, if set, replaces the answer: it gets the reply topic and payload
	// the emulator made ("<request>/accepted" or "<request>/rejected") and
	// returns those to send. Changing /accepted to /rejected is allowed; the
	// device is subscribed to both.
	Rewrite func(topic string, payload []byte) (string, []byte)
}

type faultSet struct {
	mu     sync.Mutex
	faults []*activeFault
}

type activeFault struct {
	Fault
	left int // <0: unlimited
}

type faultHook struct {
	mqtt.HookBase
	e   *Emulator
	set *faultSet
}

func (h *faultHook) ID() string { return "thingcert-emulator-faults" }

func (h *faultHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketEncode}, []byte{b})
}

// InjectFault makes the emulator misanswer requests as f says, until the
// returned function is called or f.Times answers were changed. Faults are
// applied in the order they were injected; one answer is changed by one fault.
func (e *Emulator) InjectFault(f Fault) (remove func(), err error) {
	if f.Topic == "" {
		return nil, fmt.Errorf("emulator: fault without a topic: %w", ErrInvalid)
	}
	if f.Drop && f.Disconnect || (f.Drop || f.Disconnect) && f.Rewrite != nil {
		return nil, fmt.Errorf("emulator: a fault drops, disconnects or rewrites, one of them: %w", ErrInvalid)
	}
	e.faultsOnce.Do(func() {
		e.faults = &faultSet{}
		err = e.server.AddHook(&faultHook{e: e, set: e.faults}, nil)
	})
	if err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	af := &activeFault{Fault: f, left: f.Times}
	if f.Times <= 0 {
		af.left = -1
	}
	e.faults.mu.Lock()
	e.faults.faults = append(e.faults.faults, af)
	e.faults.mu.Unlock()
	return func() {
		e.faults.mu.Lock()
		defer e.faults.mu.Unlock()
		for i, x := range e.faults.faults {
			if x == af {
				e.faults.faults = append(e.faults.faults[:i], e.faults.faults[i+1:]...)
				return
			}
		}
	}, nil
}

// take finds the fault for a reply topic and counts its use.
func (s *faultSet) take(replyTopic string) *Fault {
	req, ok := strings.CutSuffix(replyTopic, "/accepted")
	if !ok {
		if req, ok = strings.CutSuffix(replyTopic, "/rejected"); !ok {
			return nil
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		match := f.Topic == req
		if p, wild := strings.CutSuffix(f.Topic, "#"); wild {
			match = strings.HasPrefix(req, p)
		}
		if !match || f.left == 0 {
			continue
		}
		if f.left > 0 {
			f.left--
			if f.left == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		c := f.Fault
		return &c
	}
	return nil
}

// OnPacketEncode sees every packet on its way to a device: the emulator's
// replies go out through it, so a fault changes them here.
func (h *faultHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline {
		return pk
	}
	f := h.set.take(pk.TopicName)
	if f == nil {
		return pk
	}
	h.e.log.Info("emulator: fault injected", "client_id", cl.ID, "reply_topic", pk.TopicName, "drop", f.Drop, "disconnect", f.Disconnect, "rewrite", f.Rewrite != nil)
	switch {
	case f.Rewrite != nil:
		topic, payload := f.Rewrite(pk.TopicName, bytes.Clone(pk.Payload))
		pk.TopicName, pk.Payload = topic, payload
		return pk
	case f.Disconnect:
		if sess := sessionOf(cl); sess != nil {
			sess.mu.Lock()
			sess.endRule, sess.endReason = RuleClosed, "fault injected: connection dropped instead of the reply on "+pk.TopicName
			sess.mu.Unlock()
		}
		cl.Stop(fmt.Errorf("emulator: fault injected: connection dropped before the reply on %s", pk.TopicName))
	}
	// Dropped (or the connection is closing): a PINGRESP in its place says
	// nothing to the device.
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
}
