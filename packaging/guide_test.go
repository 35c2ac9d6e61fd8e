package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// TestGatewayGuideCommands runs docs/gateway-guide.md's install steps, in the
// guide's order, as far as this machine allows: systemd-sysusers makes the
// users and groups in a scratch root (not this machine's), then every
// `sudo install` of the guide runs with its paths moved into that root and
// its owners and groups as the IDs sysusers gave. The guide must create the
// users before any step names them, and the secrets (the PIN file, the claim
// key) must end up the agent user's alone, as the agent requires.
func TestGatewayGuideCommands(t *testing.T) {
	sysusers := testpeers.Need(t, "systemd-sysusers")[0]
	if os.Geteuid() != 0 {
		testpeers.Missing(t, "the guide's install -o/-g need root (CI runs as root)")
	}
	b, err := os.ReadFile("../docs/gateway-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds := regexp.MustCompile("sudo (systemd-sysusers|install [^`\n&#]*)").FindAllStringSubmatch(string(b), -1)
	root := t.TempDir()
	// What any systemd system has; /etc/thingcert is the guide's to make.
	for _, d := range []string{"etc/sysusers.d", "etc/systemd/system", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := t.TempDir()
	for _, f := range []string{"pin", "claim.key", "claim.pem"} {
		if err := os.WriteFile(filepath.Join(src, f), []byte(f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	users, groups := map[string]int{"root": 0}, map[string]int{"root": 0}
	haveUsers := false
	for _, m := range cmds {
		line := strings.TrimSpace(m[1])
		if line == "systemd-sysusers" {
			if out, err := exec.Command(sysusers, "--root="+root, filepath.Join(mustAbs(t, "."), "sysusers.conf")).CombinedOutput(); err != nil {
				t.Fatalf("systemd-sysusers: %v\n%s", err, out)
			}
			readIDs(t, filepath.Join(root, "etc/passwd"), users)
			readIDs(t, filepath.Join(root, "etc/group"), groups)
			haveUsers = true
			continue
		}
		f := strings.Fields(line)
		if strings.Contains(line, "/tmp/thingcert") {
			continue // the binary, copied over ssh
		}
		var args []string
		for i := 1; i < len(f); i++ {
			switch a := f[i]; {
			case a == "-o" || a == "-g":
				name := f[i+1]
				ids := users
				if a == "-g" {
					ids = groups
				}
				id, ok := ids[name]
				if !ok {
					t.Fatalf("%q names %s before the guide created it (systemd-sysusers ran: %v)", line, name, haveUsers)
				}
				args = append(args, a, strconv.Itoa(id))
				i++
			case a == "-m":
				args = append(args, a, f[i+1])
				i++
			case strings.HasPrefix(a, "/"):
				args = append(args, filepath.Join(root, a))
			case strings.HasPrefix(a, "packaging/"):
				args = append(args, filepath.Join("..", a))
			case strings.HasPrefix(a, "-"):
				args = append(args, a)
			default:
				args = append(args, filepath.Join(src, a))
			}
		}
		if out, err := exec.Command("install", args...).CombinedOutput(); err != nil {
			t.Fatalf("install %s (from %q): %v\n%s", strings.Join(args, " "), line, err, out)
		}
	}
	if !haveUsers {
		t.Fatal("the guide never runs systemd-sysusers")
	}
	// The agent's user is in tss (the TPM) and thingcert-clients (the
	// socket's group).
	g, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	for _, grp := range []string{"tss", "thingcert-clients"} {
		if !regexp.MustCompile(`(?m)^` + grp + `:x:\d+:(.*,)?thingcert(,|$)`).Match(g) {
			t.Errorf("thingcert is not a member of %s:\n%s", grp, g)
		}
	}
	agent := users["thingcert"]
	for _, c := range []struct {
		path string
		mode os.FileMode
		uid  int
	}{
		{"etc/thingcert/pin", 0o600, agent},
		{"etc/thingcert/claim", 0o700 | os.ModeDir, agent},
		{"etc/thingcert/claim/claim.key", 0o600, agent},
		{"etc/thingcert/claim/claim.pem", 0o600, agent},
		{"etc/thingcert/thingcert.yaml", 0o640, 0},
		{"etc/thingcert", 0o750 | os.ModeDir, 0},
	} {
		fi, err := os.Stat(filepath.Join(root, c.path))
		if err != nil {
			t.Errorf("the guide does not install /%s: %v", c.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != c.mode || int(st.Uid) != c.uid {
			t.Errorf("/%s: %v uid %d, want %v uid %d", c.path, fi.Mode(), st.Uid, c.mode, c.uid)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// readIDs adds name → ID from a passwd or group file.
func readIDs(t *testing.T, path string, ids map[string]int) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Split(sc.Text(), ":")
		if len(p) < 3 {
			continue
		}
		if id, err := strconv.Atoi(p[2]); err == nil {
			if _, ok := ids[p[0]]; !ok {
				ids[p[0]] = id
			}
		}
	}
}
