package fleet

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
)

func sampleReport(now time.Time) *Report {
	r := &Report{At: now, Scope: "account"}
	for i := range 40 {
		c := Certificate{ID: strings.Repeat("ab", 32), Status: "ACTIVE", NotBefore: now.Add(-time.Duration(i*11) * 24 * time.Hour),
			NotAfter: now.Add(time.Duration(i*23) * 24 * time.Hour), KeyAlgorithm: "ECDSA", KeyBits: 256, SigAlgorithm: "ECDSA-SHA256"}
		c.AgeDays = i * 11
		r.Things = append(r.Things, Thing{Name: "dev-" + string(rune('a'+i%26)), Certificates: []Certificate{c}})
	}
	r.Findings = CertificateFindings(r.Things, AuditOptions{}, now)
	r.Findings = append(r.Findings, Finding{Check: CheckDeviceCertShared, Thing: "<script>alert(1)</script>", Detail: "escaped"})
	return r
}

// TestHTMLIsSelfContained: the page loads nothing from elsewhere, runs no
// script, and escapes what it shows.
func TestHTMLIsSelfContained(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport(time.Now()).WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, bad := range []*regexp.Regexp{regexp.MustCompile(`(?i)<script`), regexp.MustCompile(`(?i)\bsrc=`), regexp.MustCompile(`(?i)\bhref=`),
		regexp.MustCompile(`(?i)@import`), regexp.MustCompile(`(?i)url\(`), regexp.MustCompile(`(?i)<link`)} {
		if loc := bad.FindStringIndex(page); loc != nil {
			t.Errorf("page has %q at %d", page[loc[0]:loc[1]], loc[0])
		}
	}
	if !strings.Contains(page, "&lt;script&gt;") || strings.Count(page, "<rect") < 10 || !strings.Contains(page, CheckDeviceCertExpiring) {
		t.Error("page lacks the escaped finding, the histogram bars or the findings table")
	}
}

// TestHTMLRendersInChromium: headless Chromium draws the page, and the
// screenshot shows the histograms' bars (their colour) on a page that is not blank.
func TestHTMLRendersInChromium(t *testing.T) {
	bin := testpeers.Need(t, "chromium")[0]
	dir := t.TempDir()
	page := filepath.Join(dir, "audit.html")
	var b bytes.Buffer
	if err := sampleReport(time.Now()).WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "shot.png")
	if p := os.Getenv("FLEET_KEEP_SHOT"); p != "" {
		shot = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--window-size=1400,1000", "--screenshot="+shot, "file://"+page)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	bounds := img.Bounds()
	nonWhite, bar := 0, 0
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if r < 240 || g < 240 || bl < 240 {
				nonWhite++
			}
			if near(r, 0x2a) && near(g, 0x6f) && near(bl, 0xb0) {
				bar++
			}
		}
	}
	total := bounds.Dx() * bounds.Dy()
	if nonWhite < total/100 || bar < 2000 {
		t.Fatalf("screenshot %dx%d: %d non-white pixels, %d in the bars' colour: the page did not render", bounds.Dx(), bounds.Dy(), nonWhite, bar)
	}
}

func near(v, want uint32) bool { return v+6 >= want && v <= want+6 }
