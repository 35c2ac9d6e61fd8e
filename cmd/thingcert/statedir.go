package main

import (
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"

	"github.com/thingcert/thingcert/config"
)

// Where status and doctor find the state folder, in this order:
//
//  1. --state DIR, when given;
//  2. the config's state_dir, when the config loads;
//  3. when it does not (the broken file a SIGHUP just refused, say), its
//     state_dir read leniently: the file only has to be YAML with a
//     state_dir string, whatever else is wrong in it (a relative path is
//     taken from the file's folder, as config.Load does);
//  4. else the default, /var/lib/thingcert (the unit's StateDirectory).
const (
	fromFlag    = "--state"
	fromConfig  = "the config's state_dir"
	fromLenient = "state_dir read from the config that does not load"
	fromDefault = "the default state folder"
)

// stateDir is the state folder and how it was found; cfg is nil when the
// config did not load.
func stateDir(flagDir, cfgPath string, cfg *config.Config) (dir, how string) {
	switch {
	case flagDir != "":
		return flagDir, fromFlag
	case cfg != nil:
		return cfg.StateDir, fromConfig
	}
	if d := lenientStateDir(cfgPath); d != "" {
		return d, fromLenient
	}
	return config.DefaultStateDir, fromDefault
}

// lenientStateDir is state_dir from a file that may not be a valid
// configuration; "" when it cannot be read or has none.
func lenientStateDir(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var v struct {
		StateDir string `yaml:"state_dir"`
	}
	if yaml.Unmarshal(data, &v) != nil || v.StateDir == "" {
		return ""
	}
	if !filepath.IsAbs(v.StateDir) {
		base := filepath.Dir(path)
		if abs, err := filepath.Abs(base); err == nil {
			base = abs
		}
		return filepath.Join(base, v.StateDir)
	}
	return v.StateDir
}
