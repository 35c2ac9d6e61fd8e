package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// guideStory is the shell block that follows "<!-- story: name -->" in
// docs/owner-ca.md.
func guideStory(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/owner-ca.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- story: " + regexp.QuoteMeta(name) + " -->\n```sh\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatalf("docs/owner-ca.md has no story %q", name)
	}
	return string(m[1])
}

// runGuideStory runs a story of docs/owner-ca.md as it is written, with aws
// and thingcert pointing at the emulator and the binary under test.
func runGuideStory(t *testing.T, s *awsStory, name string, env ...string) string {
	t.Helper()
	s.env = append(s.env, env...)
	s.prelude += `aws() { command "$AWS" --endpoint-url "$AWS_ENDPOINT_URL_IOT" "$@"; }
thingcert() { command "$THINGCERT" "$@"; }
`
	return s.run(name, guideStory(t, name), true)
}

// lastLines are the last n lines of out.
func lastLines(out string, n int) []string {
	l := strings.Split(strings.TrimSpace(out), "\n")
	if len(l) < n {
		return l
	}
	return l[len(l)-n:]
}

// TestOwnerCAGuideStories runs the stories of docs/owner-ca.md: kind 1
// (fleet provisioning) and kind 2 (step-ca, JITP), each against the
// emulator's control plane with the aws CLI, kind 2 with a real step-ca.
func TestOwnerCAGuideStories(t *testing.T) {
	testpeers.Need(t, "openssl", "python3")
	t.Run("kind-1", func(t *testing.T) {
		s := newAWSStory(t)
		out := runGuideStory(t, s, "kind-1")
		if l := lastLines(out, 2); len(l) != 2 || l[0] != "INACTIVE" || l[1] != "ACTIVE" {
			t.Fatalf("the old certificate INACTIVE, the new ACTIVE: want the last lines so:\n%s", out)
		}
	})
	t.Run("kind-2", func(t *testing.T) {
		factory := testpeers.NewFactoryCA(t)
		ca := testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: factory.PEM})
		fdir := t.TempDir()
		if err := os.WriteFile(filepath.Join(fdir, "ca.crt"), factory.PEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fdir, "ca.key"), factory.KeyPEM(t), 0o600); err != nil {
			t.Fatal(err)
		}
		s := newAWSStory(t)
		out := runGuideStory(t, s, "kind-2", "STEPCA="+ca.Dir, "STEPCA_URL="+ca.URL, "FACTORY="+fdir)
		caID := strings.TrimSpace(s.file("ca.id"))
		l := lastLines(out, 4)
		if len(l) != 4 || l[0] != "accepted after its just-in-time registration" || l[1] != "2" || l[2] != "INACTIVE" || l[3] != "ACTIVE\t"+caID {
			t.Fatalf("want the device accepted after JITP, the thing with two certificates, the old INACTIVE and the new ACTIVE under the CA %s:\n%s", caID, out)
		}
		if !strings.Contains(ca.Log(), "path=/1.0/sign") || !strings.Contains(ca.Log(), "path=/1.0/rekey") {
			t.Errorf("step-ca did not sign then rekey:\n%s", ca.Log())
		}
	})
}
