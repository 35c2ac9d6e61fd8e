package tpmstore_test

import (
	"context"
	"crypto/tls"
	"log"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

// Open the device's TPM key and use it as a TLS client key. The store stays
// open as long as the key is used: closing it flushes the key from the TPM.
func Example() {
	ctx := context.Background()
	s, err := tpmstore.Open(ctx, "tpm:blob-dir=/var/lib/thingcert/keys", keystore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	key, err := s.Open(ctx, "tpm:blob=/var/lib/thingcert/keys/device.tpmkey")
	if err != nil {
		log.Fatal(err)
	}
	var certDER []byte // the device certificate AWS IoT issued for key.Public()
	_ = tls.Certificate{Certificate: [][]byte{certDER}, PrivateKey: key}
}

// Make a new key in the store's folder, as rotation does.
func ExampleStore_Generate() {
	ctx := context.Background()
	s, err := tpmstore.Open(ctx, "tpm:blob-dir=/var/lib/thingcert/keys?device=/dev/tpmrm0", keystore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	uri, err := s.KeyURI("device-2026") // tpm:blob=/var/lib/thingcert/keys/device-2026.tpmkey
	if err != nil {
		log.Fatal(err)
	}
	key, err := s.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("made %s", key.URI())
}
