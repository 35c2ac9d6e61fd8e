package main

import (
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/internal/testpki"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

// The example builds as a user would build it, and publishes to mosquitto with
// a file key.
func TestExampleBuildsAndPublishes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "connect")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ca := testpki.NewCA(t, "test root")
	const endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"
	server := ca.NewServer(t, endpoint)
	m := testpeers.StartMosquitto(t, testpeers.MosquittoConfig{CAPEM: ca.PEM(), CertPEM: server.CertPEM(), KeyPEM: server.KeyPEM()})

	dir := t.TempDir()
	keyURI := "file:" + filepath.Join(dir, "keys", "device.pem")
	ctx := context.Background()
	s, err := keystore.Open(ctx, keyURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	cert := filepath.Join(dir, "device.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.NewClient(t, "device-1", k.Public()).Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-endpoint", endpoint, "-address", m.Addr, "-ca", m.CAFile,
		"-key", keyURI, "-cert", cert, "-thing", "device-1", "-once").CombinedOutput()
	if err != nil {
		t.Fatalf("example failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "published to dt/device-1/hello") {
		t.Errorf("output:\n%s", out)
	}
	if !strings.Contains(m.Log(), "Received PUBLISH from device-1") {
		t.Error("mosquitto received no PUBLISH from the example")
	}
}
