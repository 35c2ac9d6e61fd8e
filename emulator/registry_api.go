package emulator

import (
	"context"
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
	return r.mutate(func(time.Time) ([]func(), error) {
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
		return nil, nil
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
