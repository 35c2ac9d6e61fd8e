// Command sdk is a device program that talks to AWS IoT through the thingcert
// agent (`thingcert run`) instead of holding a key and a connection of its
// own: it publishes a reading now and then and obeys commands, over the
// agent's connection, which survives reconnects and certificate rotations.
// The program needs no key, no certificate and no endpoint: only the agent's
// socket, which its user may open by being in the agent's group.
//
//	go build -o sensor ./examples/sdk
//	sudo usermod -aG thingcert $USER   # the agent's socket is 0660, group thingcert
//	./sensor -socket /run/thingcert/agent.sock -interval 10s
//
// Readings go to dt/<thing>/telemetry; commands come on cmd/<thing>/#.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/agentclient"
)

func main() {
	socket := flag.String("socket", agentclient.DefaultSocket, "the agent's socket (thingcert run --socket)")
	interval := flag.Duration("interval", 10*time.Second, "time between readings")
	count := flag.Int("count", 0, "stop after this many readings (0: until interrupted)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *socket, *interval, *count); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

// run connects to the agent and, should the agent restart (an upgrade, a
// configuration it could not reload), connects again.
func run(ctx context.Context, socket string, interval time.Duration, count int) error {
	sent := 0
	for {
		err := session(ctx, socket, interval, count, &sent)
		if err == nil || ctx.Err() != nil {
			return err
		}
		log.Printf("agent connection: %v; trying again in 5s", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
}

func session(ctx context.Context, socket string, interval time.Duration, count int, sent *int) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	thing := st.ThingName
	fmt.Printf("agent: thing %s, %s, certificate %.12s…\n", thing, st.Connection, st.CertificateID)

	// Commands: the handler runs for each message, in order.
	err = c.Subscribe(ctx, "cmd/"+thing+"/#", agentclient.AtLeastOnce, func(m agentclient.Message) {
		fmt.Printf("command on %s: %s\n", m.Topic, m.Payload)
	})
	if err != nil {
		return fmt.Errorf("subscribing to commands: %w", err)
	}

	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		reading, _ := json.Marshal(map[string]any{"thing": thing, "uptime_s": int(time.Since(start).Seconds()), "n": *sent + 1})
		// QoS 1: Publish returns once AWS IoT has the message. While the agent
		// reconnects or rotates, it waits; the context bounds the wait.
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := c.Publish(pctx, "dt/"+thing+"/telemetry", agentclient.AtLeastOnce, reading)
		cancel()
		if err != nil {
			return fmt.Errorf("publishing: %w", err)
		}
		*sent++
		fmt.Printf("published reading %d\n", *sent)
		if count > 0 && *sent >= count {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.Done():
			return c.Err()
		case <-tick.C:
		}
	}
}
