package tpmstore

import "testing"

// FuzzParseTPMURI: key and store URIs of the TPM store. Parsing never panics,
// and what parses formats canonically to a URI that parses to the same key or
// store (a key's URI, saved in the state file, must open that key again).
func FuzzParseTPMURI(f *testing.F) {
	for _, s := range []string{
		"tpm:blob=/var/lib/thingcert/keys/device.tpmkey",
		"tpm:handle=0x81000010?device=/dev/tpm0",
		"tpm:blob=/k/../k/x.tpmkey?device=tcp:127.0.0.1:2321&auth-source=file:/etc/thingcert/tpm-auth",
		"tpm:blob-dir=/var/lib/thingcert/keys?device=tcp:[::1]:2321",
		"tpm:?device=/dev/tpmrm0",
		"tpm:handle=2164260864",
		"tpm:handle=0x81000001;blob=/x",
		"TPM:BLOB=/a%20b.tpmkey",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if k, err := parseKeyURI(s); err == nil {
			canon := keyURI(k.loc, k.device, k.authSource)
			again, err := parseKeyURI(canon)
			if err != nil {
				t.Fatalf("key URI %q parses, its canonical form %q does not: %v", s, canon, err)
			}
			if again != k {
				t.Fatalf("key URI %q: %+v; canonical %q: %+v", s, k, canon, again)
			}
		}
		if st, err := parseStoreURI(s); err == nil {
			canon := storeURIString(st)
			again, err := parseStoreURI(canon)
			if err != nil {
				t.Fatalf("store URI %q parses, its canonical form %q does not: %v", s, canon, err)
			}
			if again != st {
				t.Fatalf("store URI %q: %+v; canonical %q: %+v", s, st, canon, again)
			}
		}
	})
}
