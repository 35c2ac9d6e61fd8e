package testpeers

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// SoftHSMModule is where Debian's softhsm2 package puts the PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSM is a private SoftHSM2 token store for one test (or benchmark): a conf
// file and a token directory under t.TempDir(), one initialized token, and a
// PIN file of mode 0600.
//
// SoftHSM reads SOFTHSM2_CONF when the module is initialized (C_Initialize),
// and the module's state is per process: every PKCS#11 user in the test binary
// shares one initialized library, and sees only the tokens that existed when
// it was initialized. So:
//
//   - StartSoftHSM sets SOFTHSM2_CONF with t.Setenv, which also forbids
//     t.Parallel for the test: tests using SoftHSM run one after another.
//   - Each test must close every store it opens (t.Cleanup), so the module is
//     finalized and the next test's C_Initialize reads the next conf. SoftHSM
//     2.6 re-reads its conf on every C_Initialize after a C_Finalize; it is
//     not once per process. StartSoftHSM fails the test if the module is
//     still initialized when it starts, and a test that leaves it initialized
//     fails when it ends, so a leak is reported where it happens.
//   - Add every token (AddToken) before the first store is opened: tokens
//     made after C_Initialize are invisible until the next one.
//
// Child processes (pkcs11-tool, softhsm2-util, thingcert) inherit
// SOFTHSM2_CONF from the environment; Env returns it for explicit use.
type SoftHSM struct {
	Module   string // the PKCS#11 module
	Conf     string // the softhsm2.conf
	TokenDir string
	Label    string // the token's label
	PIN      string // user PIN
	SOPIN    string // security officer PIN
	PINFile  string // the user PIN, mode 0600
	Serial   string // the token's serial number
}

// SoftHSMOptions adjust the token store. The zero value gives a token
// labelled "thingcert" with every mechanism.
type SoftHSMOptions struct {
	// Label of the token (at most 32 bytes).
	Label string
	// ExtraConf lines are appended to softhsm2.conf, e.g.
	// "slots.mechanisms = -CKM_RSA_PKCS_KEY_PAIR_GEN" for a token that cannot
	// make RSA keys.
	ExtraConf []string
}

// StartSoftHSM makes the token store and selects it for this process. It needs
// softhsm2-util, pkcs11-tool and the module (see Need).
func StartSoftHSM(t testing.TB, opts SoftHSMOptions) *SoftHSM {
	t.Helper()
	Need(t, "softhsm2-util", "pkcs11-tool")
	NeedFile(t, SoftHSMModule, "the SoftHSM2 PKCS#11 module")
	if opts.Label == "" {
		opts.Label = "thingcert"
	}
	dir := t.TempDir()
	h := &SoftHSM{
		Module:   SoftHSMModule,
		Conf:     filepath.Join(dir, "softhsm2.conf"),
		TokenDir: filepath.Join(dir, "tokens"),
		Label:    opts.Label,
		PIN:      randomHex(t, 8),
		SOPIN:    randomHex(t, 8),
		PINFile:  filepath.Join(dir, "user.pin"),
	}
	if err := os.Mkdir(h.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := "directories.tokendir = " + h.TokenDir + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n" +
		strings.Join(opts.ExtraConf, "\n") + "\n"
	if err := os.WriteFile(h.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.PINFile, []byte(h.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", h.Conf)
	if err := softHSMIdle(h.Module); err != nil {
		t.Fatalf("SoftHSM2 cannot get a fresh token store: %v", err)
	}
	t.Cleanup(func() {
		if err := softHSMIdle(h.Module); err != nil {
			t.Errorf("at the end of the test: %v", err)
		}
	})
	h.Serial = h.AddToken(t, h.Label)
	return h
}

// AddToken initializes one more token in the store, with the same PINs, and
// returns its serial number. Call it before opening any store.
func (h *SoftHSM) AddToken(t testing.TB, label string) string {
	t.Helper()
	before := h.serials(t)
	out, err := h.command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", h.SOPIN, "--pin", h.PIN).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	for serial := range h.serials(t) {
		if !before[serial] {
			return serial
		}
	}
	t.Fatalf("softhsm2-util made no new token:\n%s", out)
	return ""
}

// serials lists the serial numbers of the initialized tokens.
func (h *SoftHSM) serials(t testing.TB) map[string]bool {
	t.Helper()
	out, err := h.command("softhsm2-util", "--show-slots").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	serials := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Serial number:"); ok && strings.TrimSpace(v) != "" {
			serials[strings.TrimSpace(v)] = true
		}
	}
	return serials
}

// StoreURI is the pkcs11: URI of the token, PIN from the PIN file.
func (h *SoftHSM) StoreURI() string {
	return "pkcs11:token=" + h.Label + "?module-path=" + h.Module + "&pin-source=file:" + h.PINFile
}

// KeyURI is the URI of the key labelled object in the token.
func (h *SoftHSM) KeyURI(object string) string {
	return "pkcs11:token=" + h.Label + ";object=" + object + "?module-path=" + h.Module + "&pin-source=file:" + h.PINFile
}

// Env is the environment a child process needs to see this token store.
func (h *SoftHSM) Env() []string {
	return append(os.Environ(), "SOFTHSM2_CONF="+h.Conf)
}

// Tool runs pkcs11-tool on the module with args and returns its output; a
// failure fails the test.
func (h *SoftHSM) Tool(t testing.TB, args ...string) string {
	t.Helper()
	out, err := h.ToolErr(args...)
	if err != nil {
		t.Fatalf("pkcs11-tool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ToolErr runs pkcs11-tool on the module with args.
func (h *SoftHSM) ToolErr(args ...string) (string, error) {
	out, err := h.command("pkcs11-tool", append([]string{"--module", h.Module}, args...)...).CombinedOutput()
	return string(out), err
}

func (h *SoftHSM) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = h.Env()
	return cmd
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
