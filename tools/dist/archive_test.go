package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"testing"
	"time"
)

// TestTarGzDependsOnlyOnContents: the order entries come in does not change
// a byte; inside, every entry is root:root (0:0) with the fixed time, and
// folders are listed before their files.
func TestTarGzDependsOnlyOnContents(t *testing.T) {
	at := time.Unix(1764500000, 0)
	es := []entry{{"thingcert", 0o755, []byte("binary")}, {"docs/a.md", 0o644, []byte("a")}, {"README.md", 0o644, []byte("r")}}
	a, err := tarGz("top", es, at)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tarGz("top", []entry{es[2], es[0], es[1]}, at)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("the same entries in another order gave other bytes")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q, time %v", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "root" || !h.ModTime.Equal(at) {
			t.Errorf("%s: %d:%d %s %v", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime)
		}
		if h.Name == "top/thingcert" && h.Mode != 0o755 {
			t.Errorf("binary mode %o", h.Mode)
		}
	}
	want := []string{"top/", "top/README.md", "top/docs/", "top/docs/a.md", "top/thingcert"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("entries %v, want %v", names, want)
			break
		}
	}
	if _, err := tarGz("top", []entry{es[0], es[0]}, at); err == nil {
		t.Error("a name given twice was archived")
	}
}
