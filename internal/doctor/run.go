package doctor

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
	"github.com/thingcert/thingcert/rotation"
)

// DefaultTimesyncFlag is the file systemd-timesyncd creates once the clock is
// synchronised (systemd-timesyncd.service(8)).
const DefaultTimesyncFlag = "/run/systemd/timesync/synchronized"

// Env is what a run checks and the probes' clock, paths and commands.
type Env struct {
	// ConfigPath is the configuration file; Config what it loaded to (nil
	// when ConfigErr says why it did not).
	ConfigPath string
	Config     *config.Config
	ConfigErr  error
	// StateDir is the state folder, found from the config or, when it does
	// not load, as the caller decided.
	StateDir string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Built is when this program was built (zero: unknown).
	Built time.Time
	// TimesyncFlag is systemd-timesyncd's flag file ("": DefaultTimesyncFlag).
	TimesyncFlag string
	// Command runs a program and returns its standard output (nil: os/exec).
	Command func(ctx context.Context, name string, args ...string) (string, error)
	// Timeout bounds each network step (0: 10s) and the MQTT connection
	// (twice it).
	Timeout time.Duration
	// Socket is the agent's socket when the daemon record does not name one.
	Socket string
}

func (e *Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Env) timeout() time.Duration {
	if e.Timeout > 0 {
		return e.Timeout
	}
	return 10 * time.Second
}

func (e *Env) command(ctx context.Context, name string, args ...string) (string, error) {
	if e.Command != nil {
		return e.Command(ctx, name, args...)
	}
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}

// run is one doctor run's findings, passed from check to check.
type run struct {
	env   *Env
	cfg   *config.Config
	rep   *Report
	now   time.Time
	roots *x509.CertPool
	state *rotation.State
	rec   *agent.DaemonRecord
	agent bool // the agent runs
	// recDamaged: the agent's record could not be read, so whether it runs
	// is unknown.
	recDamaged bool
	id         *identity
	key        keystore.Key
	store      keystore.Store
	leaf       *x509.Certificate
	chain      []*x509.Certificate
	netOK      bool // DNS, TCP and TLS passed
	rawTPM     bool // the key's TPM admits one user at a time
}

// identity is the key and certificate the device connects with.
type identity struct {
	keyURI, certFile, certID string
	clientID                 string
	kind                     string // "device", "configured", "claim"
}

// Run runs every check. It changes nothing.
func Run(ctx context.Context, env Env) *Report {
	r := &run{env: &env, cfg: env.Config, rep: &Report{Config: env.ConfigPath, StateDir: env.StateDir}, now: env.now()}
	defer func() {
		if r.store != nil {
			r.store.Close()
		}
	}()
	r.checkConfig()
	r.checkState()
	// Without a configuration, the state folder still names the identity:
	// its key, certificate and the clock are checked, and a running agent
	// is asked about its connection.
	r.pickIdentity()
	r.checkStore(ctx)
	r.checkKey(ctx)
	r.checkCertificate()
	r.checkClock(ctx)
	switch {
	case r.cfg != nil:
		r.checkNetwork(ctx)
		r.checkMQTT(ctx)
	case r.agent:
		r.rep.add(skip("network", "not checked: the configuration does not load"))
		r.mqttViaAgent(ctx)
	default:
		r.rep.add(skip("network", "not checked: the configuration does not load"))
	}
	r.checkAgent(ctx)
	return r.rep
}

func (r *run) checkConfig() {
	e := r.env
	if r.cfg == nil {
		r.rep.add(ConfigResult(e.ConfigPath, e.ConfigErr, ""))
		return
	}
	c := r.cfg
	opts, err := c.DeviceOptions()
	if err != nil {
		r.rep.add(ConfigResult(e.ConfigPath, err, ""))
		return
	}
	r.roots = opts.Roots
	r.rep.add(ConfigResult(e.ConfigPath, nil, fmt.Sprintf("thing %s, endpoint %s, store %s",
		c.ThingName, iot.Endpoint{Host: c.Endpoint, Port: c.Port, Address: c.Address}, keystore.RedactURI(c.Store))))
}

func (r *run) checkState() {
	dir := r.env.StateDir
	fi, err := os.Stat(dir)
	var mode fs.FileMode
	if err == nil {
		mode = fi.Mode()
	}
	r.rep.add(FolderResult("state folder", dir, mode, owner(fi), err))
	st, err := rotation.StateStore{Dir: dir}.Load()
	switch {
	case errors.Is(err, rotation.ErrNoState):
	case err != nil:
		r.rep.add(fail("state", "thingcert status --state "+shellQuote(dir), "%s: %v", dir, err))
	default:
		r.state = st
	}
	rec, err := agent.ReadDaemonRecord(dir)
	if err != nil {
		r.rep.add(warn("agent record", "systemctl restart thingcert", "%v", err))
		r.recDamaged = true
	}
	r.rec = rec
	r.agent = rec.Running()
}

// pickIdentity is the identity the agent would connect with: the state
// folder's current one, else the configured key and certificate, else the
// claim.
func (r *run) pickIdentity() {
	c := r.cfg
	if c == nil {
		if r.state != nil && r.state.Current != nil && !r.state.Current.Claim {
			cur := r.state.Current
			id := cur.ThingName
			if r.rec != nil && r.rec.Connection.ClientID != "" {
				id = r.rec.Connection.ClientID
			}
			r.id = &identity{keyURI: cur.KeyURI, certFile: cur.CertFile, certID: cur.CertificateID, clientID: id, kind: "device"}
		}
		return
	}
	switch {
	case r.state != nil && r.state.Current != nil:
		cur := r.state.Current
		kind := "device"
		id := c.ClientID
		if cur.Claim {
			kind = "claim"
			if c.Claim != nil {
				id = c.Claim.ClientID
			}
		}
		r.id = &identity{keyURI: cur.KeyURI, certFile: cur.CertFile, certID: cur.CertificateID, clientID: id, kind: kind}
	case c.Key != "":
		r.id = &identity{keyURI: c.Key, certFile: c.Cert, clientID: c.ClientID, kind: "configured"}
	case c.Claim != nil:
		r.id = &identity{keyURI: c.Claim.Key, certFile: c.Claim.Cert, clientID: c.Claim.ClientID, kind: "claim"}
	}
}

func (r *run) checkStore(ctx context.Context) {
	var uris []string
	if r.cfg != nil {
		uris = append(uris, r.cfg.Store)
	}
	if r.id != nil && (r.cfg == nil || r.id.keyURI != r.cfg.Store) {
		uris = append(uris, r.id.keyURI)
	}
	seen := map[string]bool{}
	for _, s := range uris {
		u, err := keystore.ParseURI(s)
		if err != nil {
			continue // the config check named it
		}
		switch u.Scheme {
		case keystore.SchemeFile:
			dir := filepath.Clean(u.Path)
			if !strings.HasSuffix(s, "/") {
				dir = filepath.Dir(u.Path)
			}
			if !seen[dir] {
				seen[dir] = true
				fi, err := os.Stat(dir)
				var mode fs.FileMode
				if err == nil {
					mode = fi.Mode()
				}
				r.rep.add(FolderResult("key folder", dir, mode, owner(fi), err))
			}
			if !strings.HasSuffix(s, "/") {
				fi, err := os.Stat(u.Path)
				var mode fs.FileMode
				if err == nil {
					mode = fi.Mode()
				}
				r.rep.add(SecretFileResult("key file", "key", u.Path, mode, owner(fi), err))
			}
		case keystore.SchemeTPM:
			dev := u.Query["device"]
			if dev == "" {
				dev = tpmstore.DefaultDevice
			}
			if seen["tpm:"+dev] {
				continue
			}
			seen["tpm:"+dev] = true
			r.checkTPM(ctx, dev)
		case keystore.SchemePKCS11:
			if seen["pkcs11"] {
				continue
			}
			seen["pkcs11"] = true
			r.checkPKCS11(ctx, s, u)
		}
	}
}

func (r *run) checkTPM(ctx context.Context, dev string) {
	raw := !isResourceManager(dev)
	r.rawTPM = raw
	if strings.HasPrefix(dev, "tcp:") {
		r.rep.add(TPMDeviceResults(dev, nil, nil)...)
	} else {
		_, statErr := os.Stat(dev)
		var openErr error
		if statErr == nil {
			if raw && r.agent {
				openErr = nil // the agent holds it; opening would say busy
			} else if f, err := os.OpenFile(dev, os.O_RDWR, 0); err != nil {
				openErr = err
			} else {
				f.Close()
			}
		}
		res := TPMDeviceResults(dev, statErr, openErr)
		if fi, err := os.Stat(dev); err == nil {
			u, g, _ := strings.Cut(owner(fi), ":")
			res = append(res, TPMServiceAccessResult(dev, fi.Mode(), u, g))
		}
		if raw && r.agent && statErr == nil {
			for i := range res {
				if res[i].Check == "tpm access" {
					res[i] = skip("tpm access", "not checked: the running agent holds %s, which admits one program at a time", dev)
				}
			}
		}
		r.rep.add(res...)
		if statErr != nil || openErr != nil {
			return
		}
	}
	if raw && r.agent {
		r.rep.add(skip("tpm", "manufacturer and firmware not read: the running agent holds %s, which admits one program at a time", dev))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	// Not OpenDevice: on a raw TPM it flushes the objects an earlier process
	// left loaded, and doctor changes nothing.
	tr, err := tpmstore.OpenTransport(cctx, dev)
	if err != nil {
		r.rep.add(fail("tpm", "ls -l "+dev, "opening %s: %v", dev, err))
		return
	}
	d := tpmstore.NewDevice(dev, tr)
	defer d.Close()
	var info string
	err = d.Run(cctx, func(t transport.TPM) error {
		var e error
		info, e = tpmInfo(t)
		return e
	})
	if err != nil {
		r.rep.add(fail("tpm", "dmesg | grep -i tpm", "%s does not answer: %v", dev, err))
		return
	}
	r.rep.add(ok("tpm", "%s", info))
}

// tpmInfo reads the manufacturer, vendor string and firmware version
// (TPM 2.0 Part 2, TPM_PT_MANUFACTURER ... TPM_PT_FIRMWARE_VERSION_2).
func tpmInfo(t transport.TPM) (string, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 8}.Execute(t)
	if err != nil {
		return "", err
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return "", err
	}
	v := map[tpm2.TPMPT]uint32{}
	for _, p := range props.TPMProperty {
		v[p.Property] = p.Value
	}
	str := func(ids ...tpm2.TPMPT) string {
		var b []byte
		for _, id := range ids {
			b = binary.BigEndian.AppendUint32(b, v[id])
		}
		return strings.Join(strings.Fields(strings.Map(func(r rune) rune {
			if r < 0x20 || r > 0x7e {
				return -1
			}
			return r
		}, string(b))), " ")
	}
	fw1, fw2 := v[tpm2.TPMPTFirmwareVersion1], v[tpm2.TPMPTFirmwareVersion2]
	return fmt.Sprintf("manufacturer %s (%s), firmware %d.%d.%d.%d", str(tpm2.TPMPTManufacturer),
		str(tpm2.TPMPTVendorString1, tpm2.TPMPTVendorString2, tpm2.TPMPTVendorString3, tpm2.TPMPTVendorString4),
		fw1>>16, fw1&0xffff, fw2>>16, fw2&0xffff), nil
}

func (r *run) checkPKCS11(ctx context.Context, storeURI string, u *keystore.URI) {
	module := u.Query["module-path"]
	modOK := true
	if module == "" {
		r.rep.add(fail("pkcs11 module", "add module-path=/usr/lib/softhsm/libsofthsm2.so (your token's module) to the store URI", "the URI names no module"))
		modOK = false
	} else if fi, err := os.Stat(module); err != nil || !fi.Mode().IsRegular() {
		r.rep.add(fail("pkcs11 module", "ls -l "+shellQuote(module)+"  (install the token's PKCS#11 module, e.g. apt install opensc or softhsm2)", "module %s: not found", module))
		modOK = false
	} else {
		r.rep.add(ok("pkcs11 module", "%s present", module))
	}
	pinOK := true
	if ps := u.Query["pin-source"]; ps != "" {
		p := strings.TrimPrefix(strings.TrimPrefix(ps, "file:"), "//")
		fi, err := os.Stat(p)
		var mode fs.FileMode
		if err == nil {
			mode = fi.Mode()
		}
		res := SecretFileResult("pkcs11 PIN file", "PIN file", p, mode, owner(fi), err)
		pinOK = res.Status == OK
		r.rep.add(res)
	} else if _, inline := u.Attrs["pin-value"]; inline {
		r.rep.add(warn("pkcs11 PIN file", "write the PIN to a file (umask 077; printf '%s' PIN > /etc/thingcert/pin) and use pin-source=file:/etc/thingcert/pin",
			"the PIN is written in the URI (pin-value): whoever reads the configuration reads it"))
	}
	if !modOK || !pinOK {
		r.rep.add(skip("pkcs11 token", "not opened: fix the module and PIN file first"))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	s, err := keystore.Open(cctx, storeURI, keystore.Options{})
	if err != nil {
		r.rep.add(fail("pkcs11 token", "pkcs11-tool --module "+shellQuote(module)+" --list-token-slots", "%s", oneLine(err.Error())))
		return
	}
	s.Close()
	r.rep.add(ok("pkcs11 token", "module %s loads, the token is found and logs in", module))
}

func (r *run) checkKey(ctx context.Context) {
	if r.id == nil && r.cfg == nil {
		return
	}
	if r.id == nil {
		r.rep.add(warn("key", "", "no identity yet: no state, no key in the configuration and no claim"))
		return
	}
	if r.rawTPM && r.agent {
		r.rep.add(skip("key", "%s not opened: the running agent holds the TPM", keystore.RedactURI(r.id.keyURI)))
		return
	}
	if r.id.certFile != "" {
		chain, err := iot.LoadCertificateChain(r.id.certFile)
		if err == nil && len(chain) > 0 {
			r.chain, r.leaf = chain, chain[0]
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*r.env.timeout())
	defer cancel()
	shown := keystore.RedactURI(r.id.keyURI)
	s, k, err := keystore.OpenKey(cctx, r.id.keyURI, keystore.Options{})
	if err != nil {
		fix := "thingcert key show --key '" + shown + "'"
		if m := chmodRE().FindString(err.Error()); m != "" && errors.Is(err, keystore.ErrInsecure) {
			fix = m
		} else if errors.Is(err, keystore.ErrNotFound) {
			fix = "thingcert status  (the key is gone: provision again with the claim, claim.recover, or install a new key and certificate)"
		}
		r.rep.add(fail("key", fix, "%s (%s identity): %s", shown, r.id.kind, oneLine(err.Error())))
		return
	}
	r.store, r.key = s, k
	digest := sha256.Sum256([]byte("thingcert doctor " + r.now.String()))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		r.rep.add(fail("key", "thingcert key show --key '"+shown+"'", "%s does not sign: %v", shown, err))
		return
	}
	if err := verify(k.Public(), digest[:], sig); err != nil {
		r.rep.add(fail("key", "thingcert key show --key '"+shown+"'", "%s signed, but the signature does not verify with its public key: %v", shown, err))
		return
	}
	if r.leaf != nil && !samePublic(r.leaf.PublicKey, k.Public()) {
		r.rep.add(fail("key", "openssl x509 -noout -pubkey -in "+shellQuote(r.id.certFile)+"  (compare with thingcert key show; install the certificate of this key)",
			"%s signs, but it is not the key of the certificate %s", shown, r.id.certFile))
		return
	}
	r.rep.add(ok("key", "%s (%s identity) signs; the signature verifies with its public key", shown, r.id.kind))
}

// chmodRE finds the command a store's ErrInsecure error gives. It is
// compiled when used, not at start-up: every thingcert command links this
// package.
func chmodRE() *regexp.Regexp { return regexp.MustCompile(`chmod [0-7]{3,4} [^\s` + "`" + `;]+`) }

func verify(pub crypto.PublicKey, digest, sig []byte) error {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest, sig) {
			return errors.New("ECDSA verification failed")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(p, crypto.SHA256, digest, sig)
	case ed25519.PublicKey:
		return errors.New("Ed25519 keys sign messages, not digests")
	}
	return fmt.Errorf("unknown public key type %T", pub)
}

func samePublic(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func (r *run) checkCertificate() {
	if r.id == nil {
		return
	}
	if r.id.certFile == "" {
		r.rep.add(fail("certificate", "thingcert status", "the %s identity has no certificate file", r.id.kind))
		return
	}
	if r.leaf == nil {
		_, err := iot.LoadCertificateChain(r.id.certFile)
		if err == nil {
			err = errors.New("no certificate in it")
		}
		r.rep.add(fail("certificate", "ls -l "+shellQuote(r.id.certFile)+"; openssl x509 -noout -subject -dates -in "+shellQuote(r.id.certFile),
			"%s: %v", r.id.certFile, err))
		return
	}
	leaf := r.leaf
	id := iot.CertificateID(leaf)
	if r.id.certID != "" && r.id.certID != id {
		r.rep.add(fail("certificate", "thingcert status", "%s holds certificate %s, but the state says %s", r.id.certFile, id[:12], r.id.certID[:min(12, len(r.id.certID))]))
		return
	}
	chainNote := fmt.Sprintf("chain of %d", len(r.chain))
	if c := r.cfg; c != nil && c.Rotation.Trust != "" && r.id.kind != "claim" {
		pool, err := iot.LoadCAFile(c.Rotation.Trust)
		if err == nil {
			inter := x509.NewCertPool()
			for _, x := range r.chain[1:] {
				inter.AddCert(x)
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Second),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		}
		if err != nil {
			r.rep.add(fail("certificate", "openssl verify -CAfile "+shellQuote(c.Rotation.Trust)+" "+shellQuote(r.id.certFile),
				"%s does not chain to rotation.trust %s: %v", r.id.certFile, c.Rotation.Trust, err))
			return
		}
		chainNote += ", chains to rotation.trust"
	}
	r.rep.add(ok("certificate", "%s %s, %s, valid %s to %s, %s", r.id.kind, id[:12], leaf.Subject,
		leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), chainNote))
	if st := r.state; r.cfg != nil && st != nil && st.Current != nil && !st.Current.Claim {
		runner := rotation.Runner{Policy: r.cfg.Policy(), DeviceID: r.cfg.ClientID}
		d, due := runner.Due(st, r.now)
		r.rep.add(RenewalResult(st.Current, d, due, r.now))
	}
}

func (r *run) checkClock(ctx context.Context) {
	r.rep.add(NTPResult(r.ntp(ctx)))
	var notBefore time.Time
	if r.leaf != nil {
		notBefore = r.leaf.NotBefore
	} else if r.state != nil && r.state.Current != nil {
		notBefore = r.state.Current.NotBefore
	}
	r.rep.add(ClockResult(r.now, notBefore, r.env.Built))
}

// ntp asks systemd-timesyncd (its flag file, then timedatectl) and chrony.
func (r *run) ntp(ctx context.Context) NTP {
	flag := r.env.TimesyncFlag
	if flag == "" {
		flag = DefaultTimesyncFlag
	}
	if _, err := os.Stat(flag); err == nil {
		return NTP{Source: "systemd-timesyncd", Synced: true, Note: flag + " exists"}
	}
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	var notes []string
	if out, err := r.env.command(cctx, "timedatectl", "show", "-p", "NTPSynchronized", "--value"); err == nil {
		v := strings.TrimSpace(out)
		if v == "yes" || v == "no" {
			return NTP{Source: "timedatectl", Synced: v == "yes", Note: "NTPSynchronized=" + v}
		}
	} else {
		notes = append(notes, "timedatectl: "+firstLine(err))
	}
	if out, err := r.env.command(cctx, "chronyc", "-n", "tracking"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if k, v, found := strings.Cut(l, ":"); found && strings.TrimSpace(k) == "Leap status" {
				v = strings.TrimSpace(v)
				return NTP{Source: "chrony", Synced: v != "Not synchronised", Note: "leap status " + v}
			}
		}
		notes = append(notes, "chronyc tracking: no leap status")
	} else {
		notes = append(notes, "chronyc: "+firstLine(err))
	}
	return NTP{Note: strings.Join(notes, "; ")}
}

func firstLine(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		s, _, _ := strings.Cut(strings.TrimSpace(string(ee.Stderr)), "\n")
		return s
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func (r *run) endpoint() iot.Endpoint {
	return iot.Endpoint{Host: r.cfg.Endpoint, Port: r.cfg.Port, Address: r.cfg.Address}
}

func (r *run) checkNetwork(ctx context.Context) {
	ep := r.endpoint()
	dial := ep.DialAddress()
	host, port, _ := net.SplitHostPort(dial)
	fixName := "aws iot describe-endpoint --endpoint-type iot:Data-ATS  (set endpoint: in " + shellQuote(r.env.ConfigPath) + " to the address it prints; check DNS with: getent hosts " + host + ")"
	if r.cfg.Address != "" {
		fixName = "getent hosts " + host + "  (check address: in " + shellQuote(r.env.ConfigPath) + " and the device's DNS, /etc/resolv.conf)"
	}
	if net.ParseIP(host) != nil {
		r.rep.add(ok("dns", "%s is an address: no lookup (the endpoint name %s is sent as SNI)", host, ep.Host))
	} else {
		cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
		addrs, err := net.DefaultResolver.LookupHost(cctx, host)
		cancel()
		if err != nil {
			r.rep.add(fail("dns", fixName, "%s does not resolve: %v", host, err))
			r.rep.add(skip("tcp", "not checked: no address to dial"), skip("tls", "not checked: no address to dial"))
			return
		}
		r.rep.add(ok("dns", "%s resolves to %s", host, strings.Join(addrs, ", ")))
	}
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(cctx, "tcp", dial)
	if err != nil {
		why := "no answer in time: a firewall drops it"
		if errors.Is(err, syscall.ECONNREFUSED) {
			why = "connection refused: nothing listens there"
		}
		fix := "nc -vz " + host + " " + port + "  (allow outbound TCP to port " + port + "; where 8883 is blocked, set port: 443, which AWS IoT serves with ALPN)"
		r.rep.add(fail("tcp", fix, "%s: %s (%v)", dial, why, err))
		r.rep.add(skip("tls", "not checked: TCP does not connect"))
		return
	}
	r.rep.add(ok("tcp", "%s connects", dial))
	r.netOK = r.checkTLS(cctx, ep, conn)
}

// checkTLS verifies the server with the configured roots. It offers no
// client certificate: the server is judged, not the device (the MQTT check
// does that), and whether the server then accepts an anonymous client does
// not matter once its chain has been verified.
func (r *run) checkTLS(ctx context.Context, ep iot.Endpoint, conn net.Conn) bool {
	defer conn.Close()
	roots := r.roots
	rootsName := "the configured ca " + r.cfg.CA
	if roots == nil {
		var err error
		if roots, err = iot.AmazonRoots(); err != nil {
			r.rep.add(fail("tls", "", "the built-in Amazon roots: %v", err))
			return false
		}
		rootsName = "the built-in Amazon roots"
	}
	var verified *x509.Certificate
	tc := tls.Client(conn, &tls.Config{
		ServerName: ep.Host,
		RootCAs:    roots,
		MinVersion: tls.VersionTLS12,
		NextProtos: ep.ALPN(),
		Time:       r.env.Now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) > 0 {
				verified = cs.PeerCertificates[0]
			}
			return nil
		},
	})
	err := tc.HandshakeContext(ctx)
	if err == nil {
		tc.Close()
	}
	if verified != nil {
		r.rep.add(ok("tls", "the server's certificate (%s) verifies with %s for %s", verified.Subject, rootsName, ep.Host))
		return true
	}
	show := "openssl s_client -connect " + ep.DialAddress() + " -servername " + ep.Host + " -showcerts </dev/null"
	var ua x509.UnknownAuthorityError
	var host x509.HostnameError
	var inv x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		fix := show + "  (then set ca: in " + shellQuote(r.env.ConfigPath) + " to the CA that issued it; for AWS IoT use the -ats endpoint, which the built-in roots trust)"
		r.rep.add(fail("tls", fix, "the server's certificate (issuer %s) does not chain to %s", issuerOf(ua.Cert), rootsName))
	case errors.As(err, &host):
		r.rep.add(fail("tls", show+"  (check endpoint: in "+shellQuote(r.env.ConfigPath)+"; to dial another host keep the name and set address:)",
			"the server's certificate is not for %s: %v", ep.Host, err))
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		r.rep.add(fail("tls", "timedatectl set-ntp true  (or: chronyc makestep)", "the server's certificate is not valid at the device's time %s: check the clock", r.now.UTC().Format(time.RFC3339)))
	case err == nil:
		r.rep.add(fail("tls", show, "the handshake completed without a verified server chain"))
	default:
		r.rep.add(fail("tls", show, "handshake with %s: %v", ep.DialAddress(), err))
	}
	return false
}

func issuerOf(c *x509.Certificate) string {
	if c == nil {
		return "unknown"
	}
	return c.Issuer.String()
}

// checkMQTT connects as the device and subscribes to its Jobs topics, only
// when the agent is not running: AWS IoT allows one connection per client
// ID, and a second would knock the agent off. With the agent running, it
// asks the agent over its socket instead.
func (r *run) checkMQTT(ctx context.Context) {
	if r.agent {
		r.mqttViaAgent(ctx)
		return
	}
	switch {
	case r.recDamaged:
		r.rep.add(skip("mqtt", "not checked: the agent's record is damaged, so it may be running, and a connection as the device would knock it off (systemctl stop thingcert, then run doctor again)"))
		return
	case r.id == nil:
		r.rep.add(skip("mqtt", "not checked: no identity"))
		return
	case r.key == nil || r.leaf == nil:
		r.rep.add(skip("mqtt", "not checked: the key or certificate failed above"))
		return
	case !r.netOK:
		r.rep.add(skip("mqtt", "not checked: the network checks failed above"))
		return
	}
	idt, err := iot.NewIdentity(r.key, r.chain)
	if err != nil {
		r.rep.add(fail("mqtt", "thingcert status", "%v", err))
		return
	}
	ep := r.endpoint()
	c, err := iot.New(iot.Config{Endpoint: ep, Identity: iot.NewIdentitySource(idt), Roots: r.roots, ThingName: r.cfg.ThingName,
		ClientID: r.id.clientID, ConnectTimeout: 2 * r.env.timeout(), Now: r.env.Now})
	if err != nil {
		r.rep.add(fail("mqtt", "", "%v", err))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 3*r.env.timeout())
	defer cancel()
	if _, err := c.Connect(cctx); err != nil {
		r.rep.add(fail("mqtt", r.connectFix(err), "CONNECT as %s with the %s identity: %s", r.id.clientID, r.id.kind, configWords(err)))
		return
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer dcancel()
		_ = c.Disconnect(dctx)
	}()
	r.rep.add(ok("mqtt", "CONNECT as %s with the %s identity accepted by %s", r.id.clientID, r.id.kind, ep))
	switch {
	case r.id.kind == "claim":
		r.rep.add(skip("jobs topics", "not checked: the claim identity only provisions"))
		return
	case r.cfg != nil && !r.cfg.JobsEnabled():
		r.rep.add(skip("jobs topics", "not checked: rotation.jobs is off"))
		return
	}
	topic := "$aws/things/" + r.cfg.ThingName + "/jobs/notify-next"
	if err := c.Subscribe(cctx, topic, iot.AtLeastOnce, func(iot.Message) {}); err != nil {
		r.rep.add(fail("jobs topics", r.policyFix(),
			"SUBSCRIBE %s refused: the certificate's policy does not allow the Jobs topics, so rotation jobs never reach the device (%v)", topic, err))
		return
	}
	_ = c.Unsubscribe(cctx, topic)
	r.rep.add(ok("jobs topics", "SUBSCRIBE %s allowed", topic))
}

func (r *run) policyFix() string {
	t := r.cfg.ThingName
	return "aws iot list-attached-policies --target $(aws iot describe-certificate --certificate-id " + r.id.certID +
		" --query certificateDescription.certificateArn --output text)  (the policy must allow iot:Subscribe on topicfilter/$aws/things/" + t +
		"/jobs/* and iot:Publish, iot:Receive on topic/$aws/things/" + t + "/jobs/*)"
}

func (r *run) connectFix(err error) string {
	var ce *iot.ConnectError
	if !errors.As(err, &ce) {
		return ""
	}
	switch ce.Kind {
	case iot.ErrClientCertRefused, iot.ErrConnectRefused, iot.ErrClosedAfterConnect:
		if r.id.certID != "" {
			return "aws iot describe-certificate --certificate-id " + r.id.certID + " --query certificateDescription.status  (must be ACTIVE; then check its policy allows iot:Connect for client ID " + r.id.clientID + ")"
		}
		return "aws iot describe-certificate --certificate-id <ID>  (must be ACTIVE, with a policy allowing iot:Connect for client ID " + r.id.clientID + ")"
	case iot.ErrKey:
		return "thingcert key show --key '" + keystore.RedactURI(r.id.keyURI) + "'"
	}
	return "thingcert connect --config " + shellQuote(r.env.ConfigPath) + "  (it explains each step)"
}

// configWords rewords a connection error's hint, which names iot.Config
// fields, with the configuration file's keys.
func configWords(err error) string {
	msg := err.Error()
	var h interface{ HintSettings() []string }
	if errors.As(err, &h) {
		for _, s := range h.HintSettings() {
			if k := configKey(s); k != "" {
				msg = strings.ReplaceAll(msg, s, k)
			}
		}
	}
	return oneLine(msg)
}

func configKey(setting string) string {
	switch setting {
	case "Endpoint.Address":
		return "address:"
	case "Endpoint.Port":
		return "port:"
	case "Roots":
		return "ca:"
	case "ClientID":
		return "client_id:"
	case "Identity":
		return "key: and cert:"
	}
	return ""
}

func (r *run) socket() string {
	if r.rec != nil && r.rec.Socket != "" {
		return r.rec.Socket
	}
	if r.env.Socket != "" {
		return r.env.Socket
	}
	if _, err := os.Stat("/run/thingcert/agent.sock"); err == nil {
		return "/run/thingcert/agent.sock"
	}
	return filepath.Join(r.env.StateDir, "agent.sock")
}

// mqttViaAgent reports the running agent's connection, as the agent says it
// over its socket, without connecting as the device.
func (r *run) mqttViaAgent(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	sock := r.socket()
	a, err := agentclient.Dial(cctx, sock)
	var st *agentclient.Status
	if err == nil {
		st, err = a.Status(cctx)
		a.Close()
	}
	if err != nil {
		// The record still says how the connection was last seen.
		c := r.rec.Connection
		if c.State == iot.StateConnected.String() {
			r.rep.add(ok("mqtt", "the agent (pid %d) recorded it is connected as %s (not connecting as the device while the agent runs: AWS IoT allows one connection per client ID)", r.rec.PID, c.ClientID))
		} else {
			r.rep.add(fail("mqtt", "journalctl -u thingcert -n 50  (the agent's log says why)", "the agent (pid %d) recorded %s: %s", r.rec.PID, c.State, c.Error))
		}
		r.rep.add(skip("jobs topics", "not checked while the agent runs: only a connection as the device can subscribe to them"))
		return
	}
	if !st.Connected {
		c := r.rec.Connection
		r.rep.add(fail("mqtt", "journalctl -u thingcert -n 50  (the agent's log says why; stop the agent and run thingcert doctor again to test CONNECT yourself)",
			"the agent (pid %d) is %s: %s", r.rec.PID, st.Connection, configWords(errors.New(c.Error))))
	} else {
		r.rep.add(ok("mqtt", "the agent (pid %d) is connected as %s (not connecting as the device while the agent runs: AWS IoT allows one connection per client ID)", r.rec.PID, st.ClientID))
	}
	r.rep.add(skip("jobs topics", "not checked while the agent runs: only a connection as the device can subscribe to them (stop the agent to check them)"))
}

func (r *run) checkAgent(ctx context.Context) {
	rec := r.rec
	switch {
	case rec == nil:
		r.rep.add(warn("agent", "systemctl enable --now thingcert", "not running (it never ran with state folder %s)", r.env.StateDir))
		return
	case !r.agent:
		how := "ended without stopping cleanly"
		if !rec.Stopped.IsZero() {
			how = "stopped " + rec.Stopped.UTC().Format(time.RFC3339)
		}
		r.rep.add(warn("agent", "systemctl enable --now thingcert", "not running (pid %d %s)", rec.PID, how))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.env.timeout())
	defer cancel()
	sock := r.socket()
	a, err := agentclient.Dial(cctx, sock)
	if err == nil {
		_, err = a.Status(cctx)
		a.Close()
	}
	if err != nil {
		r.rep.add(fail("agent", "systemctl restart thingcert  (a user outside the service's group cannot use the socket: run doctor with sudo)",
			"running (pid %d), but its socket %s does not answer: %v", rec.PID, sock, err))
	} else {
		r.rep.add(ok("agent", "running (pid %d, since %s), its socket %s answers", rec.PID, rec.Started.UTC().Format(time.RFC3339), sock))
	}
	if rec.ReloadError != "" {
		r.rep.add(warn("agent config", editFix(rec.Config, rec.ReloadError),
			"the agent refused the last reload of %s and runs with the configuration it had: %s", rec.Config, oneLine(rec.ReloadError)))
	}
}

// owner is a file's owner as user:group names (numbers when unknown).
func owner(fi fs.FileInfo) string {
	if fi == nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "?"
	}
	u := strconv.FormatUint(uint64(st.Uid), 10)
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	g := strconv.FormatUint(uint64(st.Gid), 10)
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}
