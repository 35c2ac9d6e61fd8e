package keystore

import (
	"context"
	"crypto"
	"io"
)

// Key is a private key held in a store. Sign must be safe for concurrent use:
// a TLS handshake, a CSR and a rotation may sign at once.
type Key interface {
	crypto.Signer
	// URI is the key URI that reopens this key (see ParseURI).
	URI() string
	// Algorithm is the key's algorithm under the AWS IoT policy.
	Algorithm() Algorithm
}

// Store makes and finds keys in one place: a folder, a PKCS#11 token, a TPM.
// A Store is safe for concurrent use. Closing it makes its keys unusable.
type Store interface {
	// Generate makes a new key inside the store at keyURI. It returns an error
	// wrapping ErrExists if a key is already there and ErrPolicy or ErrUnsupported
	// for an algorithm AWS IoT or the store refuses.
	Generate(ctx context.Context, keyURI string, alg Algorithm) (Key, error)
	// Open finds an existing key; ErrNotFound if there is none.
	Open(ctx context.Context, keyURI string) (Key, error)
	// Delete removes a key (for a key pair, both halves); ErrNotFound if absent.
	Delete(ctx context.Context, keyURI string) error
	// List returns the URIs of the keys in the store.
	List(ctx context.Context) ([]string, error)
	// KeyURI is the URI a key named name would have in this store. Rotation uses
	// it to give each new key a new name beside the old one.
	KeyURI(name string) (string, error)
	io.Closer
}

// Importer is a Store that can take a private key made elsewhere, such as the
// key AWS IoT returns from CreateKeysAndCertificate. Only the file store offers
// it: a key that existed outside secure storage gains nothing by being put there.
type Importer interface {
	Import(ctx context.Context, keyURI string, priv crypto.Signer) (Key, error)
}

// UnsyncedGenerator is a Store that can make a key without waiting for its
// storage to be durable, and say how to make it so later (the file store:
// a file's fsync and its folder's). A caller that must make other files
// durable at the same point (rotation, before it sends the key's CSR) syncs
// them all together, for about the cost of one. Until sync has returned, a
// power cut may lose the key or leave it damaged; sync must be called exactly
// once, and the key relied on only after it returned nil.
type UnsyncedGenerator interface {
	GenerateUnsynced(ctx context.Context, keyURI string, alg Algorithm) (k Key, sync func() error, err error)
	// SyncKey makes an existing key durable: one found where a process that
	// stopped before its sync made it, which may still be only in memory.
	SyncKey(ctx context.Context, keyURI string) error
}

// UnsyncedDeleter is a Store that can delete a key without waiting for the
// deletion to be durable, and say how to make it so later (the file store:
// its folder's fsync), for a caller that syncs it together with other files.
// Until sync has returned, a power cut may bring the key back.
type UnsyncedDeleter interface {
	DeleteUnsynced(ctx context.Context, keyURI string) (sync func() error, err error)
}

// Protection says how a key is protected, as far as its store can tell.
type Protection struct {
	// Backend is "file", "pkcs11" or "tpm".
	Backend string `json:"backend"`
	// Hardware is true when the private key cannot be read by software.
	Hardware bool `json:"hardware"`
	// Attributes are the store's own flags, by its own names (for PKCS#11
	// "sensitive", "extractable", ...; for a TPM "fixedTPM", ...; for a file "mode").
	Attributes []Attribute `json:"attributes"`
}

// Attribute is one named fact about a key's protection.
type Attribute struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// ProtectionReporter is a Key that can say how it is protected.
type ProtectionReporter interface {
	Protection(ctx context.Context) (Protection, error)
}
