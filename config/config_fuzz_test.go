package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// FuzzParse: any config file. Parse never panics; a config it accepts passes
// Validate again and holds every duration within 0..MaxDuration or off, so a
// value can never wrap into "off" unseen.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "rotation:\n  grace_period: 200000d\n  max_age: 365d\n"))
	f.Add([]byte(minimal + "rotation:\n  lifetime_ratio: 2/3\n  jitter: 1d12h\n  retry_min: 30s\n  retry_max: off\n"))
	f.Add([]byte("endpoint: [1, 2]\n"))
	for _, p := range []string{"../examples/config/thingcert.yaml", "../packaging/thingcert.yaml"} {
		if b, err := os.ReadFile(filepath.FromSlash(p)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "/etc/thingcert/thingcert.yaml")
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config Validate refuses: %v", err)
		}
		checkDurations(t, reflect.ValueOf(c).Elem(), "")
	})
}

// checkDurations walks a config struct for Duration fields.
func checkDurations(t *testing.T, v reflect.Value, path string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			checkDurations(t, v.Elem(), path)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				checkDurations(t, v.Field(i), path+"."+v.Type().Field(i).Name)
			}
		}
	case reflect.Int64:
		if v.Type() == reflect.TypeOf(Duration(0)) {
			d := time.Duration(v.Int())
			if d != Off && (d < 0 || d > MaxDuration) {
				t.Fatalf("%s = %v: outside 0..%v and not off", path, d, MaxDuration)
			}
		}
	}
}
