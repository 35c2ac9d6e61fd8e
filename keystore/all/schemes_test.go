package all_test

import (
	"slices"
	"testing"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

// TestSchemesMatchBuild: the list `thingcert version` prints follows what the
// build really has: pkcs11 exactly when pkcs11store was compiled with cgo.
func TestSchemesMatchBuild(t *testing.T) {
	got := all.Schemes()
	if !slices.Contains(got, keystore.SchemeFile) || !slices.Contains(got, keystore.SchemeTPM) {
		t.Errorf("Schemes() = %v: file and tpm are in every build", got)
	}
	if slices.Contains(got, keystore.SchemePKCS11) != pkcs11store.Available {
		t.Errorf("Schemes() = %v, but pkcs11store.Available = %v", got, pkcs11store.Available)
	}
}
