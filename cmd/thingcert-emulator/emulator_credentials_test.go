package main

import (
	"context"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/emulator"
)

func TestEmulatorCredentials(t *testing.T) {
	dir := t.TempDir()
	emu, err := emulator.Start(context.Background(), emulator.Config{StateDir: dir, APIListen: "127.0.0.1:0", Accounts: []emulator.Account{{Name: "dev", Region: "eu-central-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	key, err := emu.AccessKey("dev")
	if err != nil {
		t.Fatal(err)
	}
	out := mustCLI(t, "emulator", "credentials", "--state", dir)
	want := strings.Join([]string{
		"AWS_ACCESS_KEY_ID=" + key.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + key.SecretAccessKey,
		"AWS_REGION=eu-central-1",
		"AWS_DEFAULT_REGION=eu-central-1",
		"AWS_ENDPOINT_URL_IOT=" + emu.APIURL(),
		"AWS_CA_BUNDLE=" + emu.RootCAFile(),
	}, "\n") + "\n"
	if out != want {
		t.Errorf("credentials:\n%s\nwant:\n%s", out, want)
	}

	if _, err := emu.AddAccount(context.Background(), emulator.Account{Name: "prod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "emulator", "credentials", "--state", dir); err == nil || !strings.Contains(err.Error(), "--account") {
		t.Errorf("two accounts, no --account: %v", err)
	}
	if out := mustCLI(t, "emulator", "credentials", "--state", dir, "--account", "prod"); !strings.Contains(out, "AWS_REGION=us-east-1\n") {
		t.Errorf("--account prod:\n%s", out)
	}
	if err := emu.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "emulator", "credentials", "--state", dir, "--account", "dev"); err == nil || !strings.Contains(err.Error(), "--api-listen") {
		t.Errorf("no emulator running: %v", err)
	}
}

func TestShellWord(t *testing.T) {
	for in, want := range map[string]string{
		"AKIAABC":             "AKIAABC",
		"a+b/c=":              "a+b/c=",
		"https://127.0.0.1:1": "https://127.0.0.1:1",
		"/tmp/my state/r.pem": "'/tmp/my state/r.pem'",
		"it's":                `'it'\''s'`,
		"":                    "''",
	} {
		if got := shellWord(in); got != want {
			t.Errorf("shellWord(%q) = %s, want %s", in, got, want)
		}
	}
}
