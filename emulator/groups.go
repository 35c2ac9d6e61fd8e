package emulator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Static thing groups: named sets of things that jobs target. A thing
// added to a group later gets an execution of the group's CONTINUOUS jobs;
// one removed from it has its pending executions of them REMOVED.

type groupRec struct {
	ID          string            `json:"id"`
	Description string            `json:"description,omitempty"`
	Attributes  map[string]string `json:"attributes,omitempty"`
	Version     int64             `json:"version"`
	CreatedAt   time.Time         `json:"createdAt"`
	Things      map[string]bool   `json:"things,omitempty"`
}

const maxGroupDescription = 2028

func exportGroup(a *accountRec, name string, g *groupRec) ThingGroup {
	return ThingGroup{
		Account: a.Name, Name: name, ID: g.ID, ARN: iotARN(a, "thinggroup/"+name), Description: g.Description,
		Attributes: maps.Clone(g.Attributes), Version: g.Version, CreatedAt: g.CreatedAt,
	}
}

// checkGroupAttributes applies AWS's attribute rules: names of 1-128 characters
// [a-zA-Z0-9_.,@/:#-], values of at most 800 [a-zA-Z0-9_.,@/:#=[]-].
func checkGroupAttributes(attrs map[string]string) error {
	for _, k := range sortedKeys(attrs) {
		if !isName(k, 128, "_.,@/:#-") {
			return fmt.Errorf("emulator: attribute name %q: %w: use 1-128 letters, digits or _.,@/:#-", k, ErrInvalid)
		}
		if v := attrs[k]; len(v) > 800 || (v != "" && !isName(v, 800, "_.,@/:#=[]-")) {
			return fmt.Errorf("emulator: attribute %q: value %q: %w: use at most 800 letters, digits or _.,@/:#=[]-", k, v, ErrInvalid)
		}
	}
	return nil
}

// CreateThingGroup creates a static thing group (its Name, Description and
// Attributes are read). As on AWS, creating a group again with the same
// properties returns the existing one; with other properties it is
// ErrExists.
func (r *Registry) CreateThingGroup(ctx context.Context, account string, g ThingGroup) (ThingGroup, error) {
	if err := ctx.Err(); err != nil {
		return ThingGroup{}, err
	}
	if !isThingName(g.Name) {
		return ThingGroup{}, fmt.Errorf("emulator: thing group name %q: %w: use 1-128 letters, digits, ':', '_' or '-'", g.Name, ErrInvalid)
	}
	// AWS's pattern [\p{Graph}\x20]* is ASCII (Java's \p{Graph}).
	if len(g.Description) > maxGroupDescription || strings.ContainsFunc(g.Description, func(c rune) bool { return c < 0x20 || c > 0x7e }) {
		return ThingGroup{}, fmt.Errorf("emulator: thing group %s: %w: the description must have at most %d printable ASCII characters", g.Name, ErrInvalid, maxGroupDescription)
	}
	if err := checkGroupAttributes(g.Attributes); err != nil {
		return ThingGroup{}, err
	}
	var out ThingGroup
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if old, ok := a.Groups[g.Name]; ok {
			if old.Description == g.Description && maps.Equal(old.Attributes, g.Attributes) {
				out = exportGroup(a, g.Name, old)
				return nil, nil
			}
			return nil, fmt.Errorf("emulator: thing group %q in account %s: %w with other properties", g.Name, account, ErrExists)
		}
		rec := &groupRec{ID: newEventID(), Description: g.Description, Attributes: maps.Clone(g.Attributes), Version: 1, CreatedAt: now, Things: map[string]bool{}}
		if a.Groups == nil {
			a.Groups = map[string]*groupRec{}
		}
		a.Groups[g.Name] = rec
		tx.touchGroup(account, g.Name)
		out = exportGroup(a, g.Name, rec)
		return nil, nil
	})
	if err == nil {
		r.log.Info("emulator: thing group created", "account", account, "thing_group", g.Name)
	}
	return out, err
}

func (r *Registry) groupLocked(a *accountRec, name string) (*groupRec, error) {
	g, ok := a.Groups[name]
	if !ok {
		return nil, fmt.Errorf("emulator: thing group %q in account %s: %w", name, a.Name, ErrNotFound)
	}
	return g, nil
}

// DescribeThingGroup returns one thing group.
func (r *Registry) DescribeThingGroup(ctx context.Context, account, name string) (ThingGroup, error) {
	return readAccount(ctx, r, account, func(a *accountRec) (ThingGroup, error) {
		g, err := r.groupLocked(a, name)
		if err != nil {
			return ThingGroup{}, err
		}
		return exportGroup(a, name, g), nil
	})
}

// ListThingGroups lists an account's thing groups whose names start with
// prefix, by name, one page at a time.
func (r *Registry) ListThingGroups(ctx context.Context, account, prefix string, p Page) ([]ThingGroup, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	if prefix != "" && !isThingName(prefix) {
		return nil, "", fmt.Errorf("emulator: thing group name prefix %q: %w: use 1-128 letters, digits, ':', '_' or '-'", prefix, ErrInvalid)
	}
	r.mu.RLock()
	a, err := r.accountLocked(account)
	var all []ThingGroup
	if err == nil {
		for _, name := range sortedKeys(a.Groups) {
			if strings.HasPrefix(name, prefix) {
				all = append(all, exportGroup(a, name, a.Groups[name]))
			}
		}
	}
	r.mu.RUnlock()
	if err != nil {
		return nil, "", err
	}
	return listPage(all, func(g ThingGroup) string { return g.Name }, p)
}

// ListThingsInThingGroup lists the names of a group's things, sorted, one page
// at a time.
func (r *Registry) ListThingsInThingGroup(ctx context.Context, account, group string, p Page) ([]string, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	r.mu.RLock()
	a, err := r.accountLocked(account)
	var things []string
	if err == nil {
		var g *groupRec
		if g, err = r.groupLocked(a, group); err == nil {
			// A deleted thing leaves its groups.
			for _, t := range sortedKeys(g.Things) {
				if _, ok := a.Things[t]; ok {
					things = append(things, t)
				}
			}
		}
	}
	r.mu.RUnlock()
	if err != nil {
		return nil, "", err
	}
	return listPage(things, func(s string) string { return s }, p)
}

// AddThingToThingGroup adds a thing to a group (adding a member again changes
// nothing). A thing belongs to at most 10 groups, as on AWS. The group's
// CONTINUOUS jobs get an execution on the thing.
func (r *Registry) AddThingToThingGroup(ctx context.Context, account, group, thing string) error {
	err := r.jobsUpdate(ctx, account, false, func(fx *jobEffects) error {
		a := fx.a
		g, err := r.groupLocked(a, group)
		if err != nil {
			return err
		}
		if _, ok := a.Things[thing]; !ok {
			return fmt.Errorf("emulator: thing %q in account %s: %w", thing, a.Name, ErrNotFound)
		}
		if g.Things[thing] {
			return nil
		}
		n := 0
		for _, other := range a.Groups {
			if other.Things[thing] {
				n++
			}
		}
		if n >= maxGroupsPerThing {
			return fmt.Errorf("emulator: thing %q is in %d thing groups already: %w: AWS allows %d", thing, n, ErrInvalid, maxGroupsPerThing)
		}
		if g.Things == nil {
			g.Things = map[string]bool{}
		}
		g.Things[thing] = true
		fx.tx.touchMember(a.Name, group, thing)
		for _, id := range sortedKeys(a.Jobs) {
			j := a.Jobs[id]
			if j.targetSelection() != TargetContinuous || j.status() != JobStatusInProgress || !slices.Contains(j.Groups, group) {
				continue
			}
			if e, ok := j.Executions[thing]; ok && e.Status != JobRemoved {
				continue
			}
			fx.queue(id, j, thing)
			fx.release(id, j)
		}
		return nil
	})
	if err == nil {
		r.log.Info("emulator: thing added to thing group", "account", account, "thing_group", group, "thing", thing)
	}
	return err
}

// thingDeletedLocked takes a deleted thing out of its groups and marks its
// pending executions REMOVED, as AWS does; it returns the events to publish.
func (r *Registry) thingDeletedLocked(tx *changeSet, a *accountRec, thing string, now time.Time) []func() {
	fx := r.jobEffectsFor(tx, a, now)
	for name, g := range a.Groups {
		if _, ok := g.Things[thing]; ok {
			delete(g.Things, thing)
			tx.touchMember(a.Name, name, thing)
		}
	}
	for _, id := range sortedKeys(a.Jobs) {
		j := a.Jobs[id]
		if e, ok := j.Executions[thing]; ok && !e.status(now).Terminal() {
			e.Status, e.LastUpdatedAt, e.Version, e.AwaitingRollout = JobRemoved, now, e.Version+1, false
			fx.execChanged(id, thing)
			fx.ended(id, j, thing, e)
		}
	}
	// The thing has no connection left to notify: only the events go out.
	return fx.events
}

// RemoveThingFromThingGroup takes a thing out of a group (a thing that is not
// a member is no error, as on AWS). The thing's pending executions of the
// group's CONTINUOUS jobs become REMOVED, unless the job targets it otherwise.
func (r *Registry) RemoveThingFromThingGroup(ctx context.Context, account, group, thing string) error {
	return r.jobsUpdate(ctx, account, false, func(fx *jobEffects) error {
		a := fx.a
		g, err := r.groupLocked(a, group)
		if err != nil {
			return err
		}
		if _, ok := a.Things[thing]; !ok {
			return fmt.Errorf("emulator: thing %q in account %s: %w", thing, a.Name, ErrNotFound)
		}
		if !g.Things[thing] {
			return nil
		}
		delete(g.Things, thing)
		fx.tx.touchMember(a.Name, group, thing)
		for _, id := range sortedKeys(a.Jobs) {
			j := a.Jobs[id]
			if j.targetSelection() != TargetContinuous || j.status() != JobStatusInProgress || !slices.Contains(j.Groups, group) || slices.Contains(j.Things, thing) {
				continue
			}
			stillTargeted := false
			for _, other := range j.Groups {
				if a.Groups[other] != nil && a.Groups[other].Things[thing] {
					stillTargeted = true
				}
			}
			e, ok := j.Executions[thing]
			if stillTargeted || !ok || e.status(fx.now).Terminal() {
				continue
			}
			fx.touch(thing)
			e.Status, e.LastUpdatedAt, e.Version, e.AwaitingRollout = JobRemoved, fx.now, e.Version+1, false
			fx.execChanged(id, thing)
			fx.ended(id, j, thing, e)
		}
		r.log.Info("emulator: thing removed from thing group", "account", account, "thing_group", group, "thing", thing)
		return nil
	})
}
