package iotpolicy

import (
	"fmt"
	"strings"
)

// Vars resolves a policy variable or condition key ("iot:ClientId",
// "iot:Connection.Thing.Attributes[color]", "iot:Certificate.Subject.Organization.List")
// to its values; ok is false when the connection has no such value, and the
// variable then stays unresolved.
type Vars func(name string) (values []string, ok bool)

// Request is one thing a connection asks to do.
type Request struct {
	// Action is iot:Connect, iot:Publish, iot:Subscribe or iot:Receive.
	Action string
	// Resource is the ARN acted on: arn:aws:iot:REGION:ACCOUNT:client/ID,
	// topic/NAME or topicfilter/FILTER.
	Resource string
	Vars     Vars
}

// Named is a parsed policy with the name it is stored under.
type Named struct {
	Name     string
	Document *Document
}

// Decision is the outcome of Evaluate. Policy and Statement name the
// statement that decided (a Deny that matched, else the first Allow); both
// are empty for an implicit deny, when no statement matched.
type Decision struct {
	Allowed   bool
	Effect    Effect
	Policy    string
	Statement int
	Sid       string
}

// Explicit reports whether a statement decided (not an implicit deny).
func (d Decision) Explicit() bool { return d.Effect != "" }

// String says what decided, for logs and error messages.
func (d Decision) String() string {
	if !d.Explicit() {
		return "no statement of the attached policies allows it (implicit deny)"
	}
	verb := "allowed"
	if !d.Allowed {
		verb = "explicitly denied"
	}
	s := fmt.Sprintf("%s by policy %s, Statement[%d]", verb, d.Policy, d.Statement)
	if d.Sid != "" {
		s += " (Sid " + d.Sid + ")"
	}
	return s
}

// Evaluate decides a request against policies as AWS IoT does: a matching
// Deny statement in any policy wins; otherwise a matching Allow statement
// allows; otherwise the request is denied.
func Evaluate(policies []Named, req Request) Decision {
	var allow *Decision
	for _, p := range policies {
		if p.Document == nil {
			continue
		}
		for _, s := range p.Document.Statements {
			if !s.matches(p.Document.Version, req) {
				continue
			}
			d := Decision{Allowed: s.Effect == Allow, Effect: s.Effect, Policy: p.Name, Statement: s.Index, Sid: s.Sid}
			if s.Effect == Deny {
				return d
			}
			if allow == nil {
				allow = &d
			}
		}
	}
	if allow != nil {
		return *allow
	}
	return Decision{}
}

func (s Statement) matches(version string, req Request) bool {
	actionOK := false
	for _, a := range s.Actions {
		// Action names are case-insensitive, as in IAM; no variables.
		if compile(strings.ToLower(a), nil).match(strings.ToLower(req.Action)) {
			actionOK = true
			break
		}
	}
	if !actionOK {
		return false
	}
	subst := substituter(version, req.Vars)
	resourceOK := false
	for _, r := range s.Resources {
		if compile(r, subst).match(req.Resource) {
			resourceOK = true
			break
		}
	}
	if !resourceOK {
		return false
	}
	for _, c := range s.Conditions {
		if !c.holds(req.Vars, subst) {
			return false
		}
	}
	return true
}

// substituter is the policy-variable substitution of a version: under
// 2012-10-17 it resolves ${name} (single-valued), and under 2008-10-17 it
// leaves the text as written.
func substituter(version string, vars Vars) func(string) string {
	if version != Version2012 {
		return nil
	}
	return func(name string) string {
		switch name {
		case "*", "?", "$":
			return name
		}
		if vars != nil {
			if v, ok := vars(name); ok && len(v) == 1 {
				return v[0]
			}
		}
		// AWS IoT: a variable that cannot be resolved is not replaced; the
		// ${...} text stays in the policy, so the statement will not match a
		// real resource.
		return "${" + name + "}"
	}
}

func (c Condition) holds(vars Vars, subst func(string) string) bool {
	var got []string
	ok := false
	if vars != nil {
		got, ok = vars(c.Key)
	}
	if c.op == "Null" {
		// "Null": "true" holds when the key is absent.
		want := len(c.Values) > 0 && strings.EqualFold(c.Values[0], "true")
		return want == !ok
	}
	op := operators[c.op]
	if !ok || len(got) == 0 {
		switch {
		case c.ifExists, c.set == "ForAllValues":
			return true
		case op.negated:
			return true
		}
		return false
	}
	sub := func(s string) string { return expand(s, subst) }
	matchOne := func(g string) bool {
		for _, w := range c.Values {
			if op.match(g, w, sub) {
				return true
			}
		}
		return false
	}
	switch c.set {
	case "ForAllValues":
		for _, g := range got {
			if !matchOne(g) {
				return op.negated
			}
		}
		return !op.negated
	default: // ForAnyValue, or a single-valued key
		for _, g := range got {
			if matchOne(g) {
				return !op.negated
			}
		}
		return op.negated
	}
}

// expand substitutes every ${name} of s (for values compared literally).
func expand(s string, subst func(string) string) string {
	if subst == nil || !strings.Contains(s, "${") {
		return s
	}
	var b strings.Builder
	for _, t := range compile(s, subst) {
		switch t.kind {
		case tokLit:
			b.WriteString(t.lit)
		case tokStar:
			b.WriteByte('*')
		case tokQuest:
			b.WriteByte('?')
		}
	}
	return b.String()
}

type tokenKind int

const (
	tokLit tokenKind = iota
	tokStar
	tokQuest
)

type token struct {
	kind tokenKind
	lit  string
}

type pattern []token

// compile turns a policy string into a pattern: * matches any run of
// characters (also /), ? exactly one, and ${name} the variable's value taken
// literally (${*}, ${?} and ${$} stand for the characters themselves).
// subst == nil leaves ${...} as literal text.
func compile(s string, subst func(string) string) pattern {
	var p pattern
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			p = append(p, token{kind: tokLit, lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '$' && subst != nil && i+1 < len(s) && s[i+1] == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				lit.WriteString(s[i:])
				i = len(s)
				continue
			}
			lit.WriteString(subst(s[i+2 : i+2+end]))
			i += 2 + end
		case c == '*':
			flush()
			p = append(p, token{kind: tokStar})
		case c == '?':
			flush()
			p = append(p, token{kind: tokQuest})
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return p
}

// match reports whether the whole of s matches the pattern, with the
// classic backtracking-to-the-last-star algorithm: O(len(p)*len(s)) at worst,
// whatever the stars.
func (p pattern) match(s string) bool {
	type item struct {
		kind tokenKind
		r    rune
	}
	var items []item
	for _, t := range p {
		if t.kind != tokLit {
			items = append(items, item{kind: t.kind})
			continue
		}
		for _, r := range t.lit {
			items = append(items, item{kind: tokLit, r: r})
		}
	}
	str := []rune(s)
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(str) {
		switch {
		case pi < len(items) && items[pi].kind == tokStar:
			starP, starS = pi, si
			pi++
		case pi < len(items) && (items[pi].kind == tokQuest || items[pi].r == str[si]):
			pi++
			si++
		case starP >= 0:
			starS++
			pi, si = starP+1, starS
		default:
			return false
		}
	}
	for pi < len(items) && items[pi].kind == tokStar {
		pi++
	}
	return pi == len(items)
}
