package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"
)

// entry is one file of a release archive: its path inside, mode and bytes.
type entry struct {
	Name string
	Mode fs.FileMode
	Data []byte
}

// tarGz writes entries under top/ as a gzipped tar whose bytes depend only
// on the entries and mtime: sorted names, explicit folders, owner root:root
// (0:0), one fixed time on everything, a gzip header without name or time.
func tarGz(top string, entries []entry, mtime time.Time) ([]byte, error) {
	es := slices.Clone(entries)
	slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.Name, b.Name) })
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	hdr := func(name string, typ byte, mode fs.FileMode, size int) *tar.Header {
		return &tar.Header{
			Typeflag: typ, Name: name, Mode: int64(mode.Perm()), Size: int64(size),
			Uname: "root", Gname: "root", ModTime: mtime, Format: tar.FormatPAX,
		}
	}
	dirs := map[string]bool{}
	var addDir func(string) error
	addDir = func(d string) error {
		if d == "." || dirs[d] {
			return nil
		}
		if err := addDir(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(hdr(d+"/", tar.TypeDir, 0o755, 0))
	}
	for i, e := range es {
		if i > 0 && es[i-1].Name == e.Name {
			return nil, fmt.Errorf("archive %s: %s twice", top, e.Name)
		}
		name := path.Join(top, e.Name)
		if err := addDir(path.Dir(name)); err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(hdr(name, tar.TypeReg, e.Mode, len(e.Data))); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipN is `gzip -9n`: Debian installs man pages compressed, without the
// original name or time in the header.
func gzipN(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
