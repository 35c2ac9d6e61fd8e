package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackagedUnit: the packaged unit runs /usr/bin/thingcert, keeps every
// directive of packaging/thingcert.service, and names no /usr/local path.
func TestPackagedUnit(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "packaging", "thingcert.service"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := packagedUnit(src)
	if err != nil {
		t.Fatal(err)
	}
	directives := func(b []byte) []string {
		var d []string
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				d = append(d, strings.Replace(l, "/usr/local/bin/thingcert", "/usr/bin/thingcert", 1))
			}
		}
		return d
	}
	if a, b := strings.Join(directives(src), "\n"), strings.Join(directives(got), "\n"); a != b {
		t.Errorf("directives changed beyond the binary's path:\n%s\n---\n%s", a, b)
	}
	if !strings.Contains(string(got), "\nExecStart=/usr/bin/thingcert run ") || strings.Contains(string(got), "/usr/local/") {
		t.Errorf("packaged unit:\n%s", got)
	}
	if _, err := packagedUnit([]byte("[Unit]\n[Service]\nExecStart=/opt/thingcert run\n")); err == nil {
		t.Error("a unit without ExecStart=/usr/local/bin/thingcert was packaged as if it ran /usr/bin/thingcert")
	}
}
