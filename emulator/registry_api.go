package emulator

import (
	"context"
	"crypto"
	"crypto/x509/pkix"
	"fmt"
	"sort"
	"time"
)

// Registry operations the control-plane API needs beyond the admin API's.

// DeleteThing deletes a thing, as AWS's DeleteThing: a thing that does not
// exist is no error, and one with certificates attached is refused (detach
// them first).
func (r *Registry) DeleteThing(ctx context.Context, account, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Things[name]; !ok {
			return nil, nil
		}
		for id, c := range a.Certs {
			for _, t := range c.Things {
				if t == name {
					return nil, fmt.Errorf("emulator: Cannot delete. Thing %s is still attached to one or more principals (certificate %s in account %s): %w: detach them first", name, id, account, ErrInvalid)
				}
			}
		}
		delete(a.Things, name)
		tx.touchThing(account, name)
		return r.thingDeletedLocked(tx, a, name, now), nil
	})
}

// thingsPage is one page of an account's things by name, those after the
// token's name that keep passes, at most size: ListThings without exporting
// every thing for every page.
func (r *Registry) thingsPage(ctx context.Context, account, token string, size int, keep func(Thing) bool) ([]Thing, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return nil, "", err
	}
	names := make([]string, 0, len(a.Things))
	for n := range a.Things {
		names = append(names, n)
	}
	sort.Strings(names)
	// The token names the last thing looked at, so a filter that skips
	// things is applied page by page: keep scanning until the page is full.
	start := 0
	if token != "" {
		after, err := decodeToken(token)
		if err != nil {
			return nil, "", err
		}
		start = sort.SearchStrings(names, after)
		if start < len(names) && names[start] == after {
			start++
		}
	}
	var out []Thing
	last := ""
	for i := start; i < len(names) && len(out) < size; i++ {
		t := exportThingLocked(a, names[i], a.Things[names[i]])
		last = names[i]
		if keep(t) {
			out = append(out, t)
		}
	}
	next := ""
	if last != "" && last != names[len(names)-1] {
		next = encodeToken(last)
	}
	return out, next, nil
}

// issueForKey signs and registers a certificate for a public key the emulator
// made (CreateKeysAndCertificate).
func (r *Registry) issueForKey(ctx context.Context, account string, pub crypto.PublicKey, status CertificateStatus) (Certificate, error) {
	if err := ctx.Err(); err != nil {
		return Certificate{}, err
	}
	var out Certificate
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		id, rec, err := r.issueLocked(tx, a, pub, pkix.Name{}, status, 0, now)
		if err != nil {
			return nil, err
		}
		out = r.exportCertLocked(a, id, rec)
		return nil, nil
	})
	if err == nil {
		r.log.Info("emulator: certificate issued with a key pair", "account", account, "cert_id", out.ID, "status", out.Status)
	}
	return out, err
}

// CAUpdate is a change to a registered CA (UpdateCACertificate); nil fields
// stay as they are.
type CAUpdate struct {
	Status           *CertificateStatus
	AutoRegistration *bool
	Registration     *CARegistrationConfig
	// RemoveRegistration drops the registration config.
	RemoveRegistration bool
}

// UpdateCA changes a registered CA's status, auto-registration flag or
// registration config.
func (r *Registry) UpdateCA(ctx context.Context, account, caID string, u CAUpdate) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if u.Status != nil {
		s, err := ParseCertificateStatus(string(*u.Status))
		if err != nil {
			return err
		}
		u.Status = &s
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		c, ok := a.CAs[caID]
		if !ok {
			return nil, fmt.Errorf("emulator: CA %s in account %s: %w", caID, account, ErrNotFound)
		}
		if u.Status != nil {
			c.Status = *u.Status
		}
		if u.AutoRegistration != nil {
			c.AutoRegistration = *u.AutoRegistration
		}
		if u.Registration != nil {
			c.Registration = u.Registration
		}
		if u.RemoveRegistration {
			c.Registration = nil
		}
		tx.touchCA(account, caID)
		return nil, nil
	})
}
