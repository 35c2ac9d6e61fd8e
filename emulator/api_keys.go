package emulator

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/thingcert/thingcert/internal/atomicfile"
)

// Files of the state folder that belong to the control-plane API.
const (
	// CredentialsFile holds one access key per account (0600): the secrets
	// that sign control-plane requests.
	CredentialsFile = "credentials.json"
	// APIEndpointFile holds the https:// URL of the running emulator's
	// control-plane API; it is removed when the emulator stops.
	APIEndpointFile = "api-endpoint"
)

// ErrNoAPI: no emulator serves the control-plane API on the state folder.
var ErrNoAPI = errors.New("no control-plane API is running")

// AccessKey is an account's AWS-style access key for the control-plane API:
// requests signed with it act on that account.
type AccessKey struct {
	Account         string `json:"account"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
	// Region is the account's region: requests must be signed for it.
	Region string `json:"region"`
	// RegistrationCode is the account's code for RegisterCACertificate's
	// verification certificate (its common name), as GetRegistrationCode returns.
	RegistrationCode string `json:"registrationCode"`
}

// keyring keeps the access keys, in CredentialsFile or in memory.
type keyring struct {
	path string // "" in memory

	mu   sync.Mutex
	keys map[string]AccessKey // by account
}

type keyringFile struct {
	Keys []AccessKey `json:"keys"`
}

func openKeyring(dir string) (*keyring, error) {
	k := &keyring{keys: map[string]AccessKey{}}
	if dir == "" {
		return k, nil
	}
	k.path = filepath.Join(dir, CredentialsFile)
	keys, err := readKeyring(k.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, a := range keys {
		k.keys[a.Account] = a
	}
	return k, nil
}

func readKeyring(path string) ([]AccessKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("emulator: reading %s: %w", path, err)
	}
	var f keyringFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("emulator: %s is not a credentials file: %w", path, err)
	}
	return f.Keys, nil
}

// randomString is n characters of alphabet from crypto/rand.
func randomString(alphabet string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// ensure gives every account a key (made as AWS makes them: AKIA and 16
// upper-case characters, a 40-character secret) and saves the file when it
// changed. Existing keys are kept, so exported variables stay valid across restarts.
func (k *keyring) ensure(accounts []Account) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	changed := false
	for _, a := range accounts {
		if have, ok := k.keys[a.Name]; ok {
			if have.Region != a.Region {
				have.Region = a.Region
				k.keys[a.Name] = have
				changed = true
			}
			continue
		}
		k.keys[a.Name] = AccessKey{
			Account:          a.Name,
			AccessKeyID:      "AKIA" + randomString("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
			SecretAccessKey:  randomString("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", 40),
			Region:           a.Region,
			RegistrationCode: randomString("0123456789abcdef", 64),
		}
		changed = true
	}
	if !changed || k.path == "" {
		return nil
	}
	f := keyringFile{Keys: make([]AccessKey, 0, len(k.keys))}
	for _, a := range k.keys {
		f.Keys = append(f.Keys, a)
	}
	sort.Slice(f.Keys, func(i, j int) bool { return f.Keys[i].Account < f.Keys[j].Account })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(k.path, data, 0o600); err != nil {
		return fmt.Errorf("emulator: saving the access keys: %w", err)
	}
	return nil
}

func (k *keyring) byAccount(account string) (AccessKey, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	a, ok := k.keys[account]
	return a, ok
}

func (k *keyring) byKeyID(id string) (AccessKey, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, a := range k.keys {
		if a.AccessKeyID == id {
			return a, true
		}
	}
	return AccessKey{}, false
}

// Credentials are what an AWS SDK or the aws CLI needs to call a running
// emulator's control-plane API as one account.
type Credentials struct {
	AccessKey
	// EndpointURL is the API's https:// URL (AWS_ENDPOINT_URL_IOT).
	EndpointURL string
	// CABundle is the root CA file the API's certificate chains to (AWS_CA_BUNDLE).
	CABundle string
}

// ReadCredentials reads, from the state folder of an emulator running with
// its control-plane API, the access key of an account ("" picks the only
// account) and the API's URL. It takes no lock: both files are written
// atomically by the emulator.
func ReadCredentials(stateDir, account string) (Credentials, error) {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	urlPath := filepath.Join(stateDir, APIEndpointFile)
	raw, err := os.ReadFile(urlPath)
	if errors.Is(err, fs.ErrNotExist) {
		return Credentials{}, fmt.Errorf("emulator: state folder %s: %w (%s is missing): start the emulator with an API listener", stateDir, ErrNoAPI, urlPath)
	}
	if err != nil {
		return Credentials{}, fmt.Errorf("emulator: reading %s: %w", urlPath, err)
	}
	keys, err := readKeyring(filepath.Join(stateDir, CredentialsFile))
	if err != nil {
		return Credentials{}, err
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, k.Account)
	}
	var pick *AccessKey
	for i := range keys {
		if keys[i].Account == account || account == "" && len(keys) == 1 {
			pick = &keys[i]
		}
	}
	if pick == nil {
		if account == "" {
			return Credentials{}, fmt.Errorf("emulator: %w: state folder %s has access keys for accounts %s: name one", ErrInvalid, stateDir, strings.Join(names, ", "))
		}
		return Credentials{}, fmt.Errorf("emulator: access key of account %q: %w in %s (accounts: %s)", account, ErrNotFound, stateDir, strings.Join(names, ", "))
	}
	return Credentials{AccessKey: *pick, EndpointURL: strings.TrimSpace(string(raw)), CABundle: filepath.Join(stateDir, RootCAFile)}, nil
}
