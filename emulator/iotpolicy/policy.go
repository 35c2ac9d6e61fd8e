// Package iotpolicy parses AWS IoT Core policy documents and evaluates MQTT
// requests against them as AWS IoT does: an explicit Deny in any statement of
// any policy wins, an Allow grants, and what nothing allows is denied.
//
// It is pure: no I/O, no clock. The emulator supplies the request (action,
// resource ARN) and the policy variables of the connection.
package iotpolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// ErrMalformed is wrapped by every Parse error: AWS IoT's
// MalformedPolicyException.
var ErrMalformed = errors.New("malformed policy document")

// The policy language versions. Only 2012-10-17 substitutes policy variables
// (${iot:ClientId}); under 2008-10-17 they are literal text, as in IAM.
const (
	Version2012 = "2012-10-17"
	Version2008 = "2008-10-17"
)

// MaxDocumentChars is AWS IoT's limit on a policy document: 2048 characters,
// whitespace not counted.
const MaxDocumentChars = 2048

// The MQTT actions a device's requests are evaluated for.
const (
	ActionConnect   = "iot:Connect"
	ActionPublish   = "iot:Publish"
	ActionSubscribe = "iot:Subscribe"
	ActionReceive   = "iot:Receive"
)

// Effect is Allow or Deny.
type Effect string

// The two effects.
const (
	Allow Effect = "Allow"
	Deny  Effect = "Deny"
)

// Document is a parsed policy document.
type Document struct {
	Version    string
	Statements []Statement
}

// Statement is one statement of a document. Index is its position (0-based)
// in the document, so a decision can point at it.
type Statement struct {
	Index      int
	Sid        string
	Effect     Effect
	Actions    []string
	Resources  []string
	Conditions []Condition
}

// Condition is one (operator, key, values) test of a statement's Condition
// block, e.g. {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}.
type Condition struct {
	// Operator as written, e.g. "ForAnyValue:StringLikeIfExists".
	Operator string
	Key      string
	Values   []string

	op       string // base operator: StringEquals, Bool, ...
	set      string // "", "ForAllValues" or "ForAnyValue"
	ifExists bool
}

type operator struct {
	negated bool
	match   func(got, want string, subst func(string) string) bool
}

var operators = map[string]operator{
	"StringEquals":              {false, func(g, w string, s func(string) string) bool { return g == s(w) }},
	"StringNotEquals":           {true, func(g, w string, s func(string) string) bool { return g == s(w) }},
	"StringEqualsIgnoreCase":    {false, func(g, w string, s func(string) string) bool { return strings.EqualFold(g, s(w)) }},
	"StringNotEqualsIgnoreCase": {true, func(g, w string, s func(string) string) bool { return strings.EqualFold(g, s(w)) }},
	"StringLike":                {false, likeMatch},
	"StringNotLike":             {true, likeMatch},
	"ArnEquals":                 {false, likeMatch},
	"ArnLike":                   {false, likeMatch},
	"ArnNotEquals":              {true, likeMatch},
	"ArnNotLike":                {true, likeMatch},
	"Bool":                      {false, func(g, w string, s func(string) string) bool { return strings.EqualFold(g, s(w)) }},
	"IpAddress":                 {false, ipMatch},
	"NotIpAddress":              {true, ipMatch},
	"NumericEquals":             {false, numeric(func(a, b float64) bool { return a == b })},
	"NumericNotEquals":          {true, numeric(func(a, b float64) bool { return a == b })},
	"NumericLessThan":           {false, numeric(func(a, b float64) bool { return a < b })},
	"NumericLessThanEquals":     {false, numeric(func(a, b float64) bool { return a <= b })},
	"NumericGreaterThan":        {false, numeric(func(a, b float64) bool { return a > b })},
	"NumericGreaterThanEquals":  {false, numeric(func(a, b float64) bool { return a >= b })},
}

func likeMatch(got, want string, subst func(string) string) bool {
	return compile(want, subst).match(got)
}

// ipMatch: the address got lies in the CIDR (or is the address) want.
func ipMatch(got, want string, subst func(string) string) bool {
	ip, err := netip.ParseAddr(got)
	if err != nil {
		return false
	}
	w := subst(want)
	if p, err := netip.ParsePrefix(w); err == nil {
		return p.Contains(ip)
	}
	a, err := netip.ParseAddr(w)
	return err == nil && a == ip
}

func numeric(cmp func(a, b float64) bool) func(string, string, func(string) string) bool {
	return func(g, w string, s func(string) string) bool {
		a, err1 := strconv.ParseFloat(g, 64)
		b, err2 := strconv.ParseFloat(s(w), 64)
		return err1 == nil && err2 == nil && cmp(a, b)
	}
}

// Parse reads a policy document, refusing what AWS IoT's CreatePolicy refuses
// (MalformedPolicyException) with an error that names the element at fault.
func Parse(document string) (*Document, error) {
	if n := countNonSpace(document); n > MaxDocumentChars {
		return nil, fmt.Errorf("%w: the document has %d characters (whitespace not counted); AWS IoT allows %d", ErrMalformed, n, MaxDocumentChars)
	}
	dec := json.NewDecoder(strings.NewReader(document))
	dec.UseNumber()
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: text after the JSON object", ErrMalformed)
	}
	doc := &Document{}
	for k, raw := range top {
		switch k {
		case "Version":
			if err := json.Unmarshal(raw, &doc.Version); err != nil {
				return nil, fmt.Errorf("%w: Version must be a string", ErrMalformed)
			}
			if doc.Version != Version2012 && doc.Version != Version2008 {
				return nil, fmt.Errorf("%w: Version %q is not a policy language version; use %q", ErrMalformed, doc.Version, Version2012)
			}
		case "Id":
		case "Statement":
		default:
			return nil, fmt.Errorf("%w: unknown element %q at the top of the document (allowed: Version, Id, Statement)", ErrMalformed, k)
		}
	}
	if doc.Version == "" {
		doc.Version = Version2008
	}
	raw, ok := top["Statement"]
	if !ok {
		return nil, fmt.Errorf("%w: the document has no Statement", ErrMalformed)
	}
	var stmts []json.RawMessage
	if trimmed := bytes.TrimSpace(raw); len(trimmed) > 0 && trimmed[0] == '{' {
		stmts = []json.RawMessage{raw}
	} else if err := json.Unmarshal(raw, &stmts); err != nil {
		return nil, fmt.Errorf("%w: Statement must be an object or an array of objects", ErrMalformed)
	}
	if len(stmts) == 0 {
		return nil, fmt.Errorf("%w: Statement is empty", ErrMalformed)
	}
	for i, raw := range stmts {
		s, err := parseStatement(i, raw)
		if err != nil {
			return nil, err
		}
		doc.Statements = append(doc.Statements, s)
	}
	return doc, nil
}

func countNonSpace(s string) int {
	n := 0
	for _, r := range s {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

func parseStatement(i int, raw json.RawMessage) (Statement, error) {
	s := Statement{Index: i}
	where := fmt.Sprintf("Statement[%d]", i)
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return s, fmt.Errorf("%w: %s is not a JSON object", ErrMalformed, where)
	}
	for k, v := range m {
		var err error
		switch k {
		case "Sid":
			if json.Unmarshal(v, &s.Sid) != nil {
				err = fmt.Errorf("%w: %s Sid must be a string", ErrMalformed, where)
			}
		case "Effect":
			var e string
			if json.Unmarshal(v, &e) != nil || (e != string(Allow) && e != string(Deny)) {
				err = fmt.Errorf("%w: %s Effect must be \"Allow\" or \"Deny\" (got %s)", ErrMalformed, where, v)
			}
			s.Effect = Effect(e)
		case "Action":
			s.Actions, err = stringOrList(v)
			if err != nil {
				err = fmt.Errorf("%w: %s Action: %v", ErrMalformed, where, err)
			}
			for _, a := range s.Actions {
				if err == nil && !validAction(a) {
					err = fmt.Errorf("%w: %s Action %q is not an action (write it as \"iot:Publish\", \"iot:*\" or \"*\")", ErrMalformed, where, a)
				}
			}
		case "Resource":
			s.Resources, err = stringOrList(v)
			if err != nil {
				err = fmt.Errorf("%w: %s Resource: %v", ErrMalformed, where, err)
			}
			for _, r := range s.Resources {
				if err == nil && r != "*" && !strings.HasPrefix(r, "arn:") {
					err = fmt.Errorf("%w: %s Resource %q must be an ARN (arn:aws:iot:REGION:ACCOUNT:topic/...) or \"*\"", ErrMalformed, where, r)
				}
			}
		case "Condition":
			s.Conditions, err = parseConditions(where, v)
		case "NotAction", "NotResource", "Principal", "NotPrincipal":
			err = fmt.Errorf("%w: %s has %s, which AWS IoT policies do not take (use Action and Resource)", ErrMalformed, where, k)
		default:
			err = fmt.Errorf("%w: %s has an unknown element %q (allowed: Sid, Effect, Action, Resource, Condition)", ErrMalformed, where, k)
		}
		if err != nil {
			return s, err
		}
	}
	switch {
	case s.Effect == "":
		return s, fmt.Errorf("%w: %s has no Effect", ErrMalformed, where)
	case len(s.Actions) == 0:
		return s, fmt.Errorf("%w: %s has no Action", ErrMalformed, where)
	case len(s.Resources) == 0:
		return s, fmt.Errorf("%w: %s has no Resource", ErrMalformed, where)
	}
	return s, nil
}

// stringOrList reads a string or a non-empty array of strings.
func stringOrList(v json.RawMessage) ([]string, error) {
	var one string
	if json.Unmarshal(v, &one) == nil {
		if one == "" {
			return nil, errors.New("empty string")
		}
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(v, &many); err != nil {
		return nil, errors.New("must be a string or an array of strings")
	}
	if len(many) == 0 {
		return nil, errors.New("empty array")
	}
	for _, s := range many {
		if s == "" {
			return nil, errors.New("empty string in the array")
		}
	}
	return many, nil
}

// validAction: "*" or service:name, where name may hold * and ?.
func validAction(a string) bool {
	if a == "*" {
		return true
	}
	svc, name, ok := strings.Cut(a, ":")
	if !ok || svc == "" || name == "" {
		return false
	}
	for _, c := range svc {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '*' || c == '?' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func parseConditions(where string, raw json.RawMessage) ([]Condition, error) {
	var block map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &block); err != nil {
		return nil, fmt.Errorf("%w: %s Condition must be an object of operators, each an object of keys and values", ErrMalformed, where)
	}
	var out []Condition
	ops := make([]string, 0, len(block))
	for op := range block {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, opName := range ops {
		c := Condition{Operator: opName}
		base := opName
		if set, rest, ok := strings.Cut(base, ":"); ok {
			if set != "ForAllValues" && set != "ForAnyValue" {
				return nil, fmt.Errorf("%w: %s Condition operator %q: the qualifier must be ForAllValues or ForAnyValue", ErrMalformed, where, opName)
			}
			c.set, base = set, rest
		}
		if b, ok := strings.CutSuffix(base, "IfExists"); ok {
			c.ifExists, base = true, b
		}
		c.op = base
		if _, ok := operators[base]; !ok && base != "Null" {
			return nil, fmt.Errorf("%w: %s Condition operator %q is not one the emulator evaluates (String*, Arn*, Bool, Numeric*, IpAddress, NotIpAddress, Null)", ErrMalformed, where, opName)
		}
		keys := make([]string, 0, len(block[opName]))
		for k := range block[opName] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) == 0 {
			return nil, fmt.Errorf("%w: %s Condition operator %q has no keys", ErrMalformed, where, opName)
		}
		for _, k := range keys {
			vals, err := conditionValues(block[opName][k])
			if err != nil {
				return nil, fmt.Errorf("%w: %s Condition %s %q: %v", ErrMalformed, where, opName, k, err)
			}
			cc := c
			cc.Key, cc.Values = k, vals
			out = append(out, cc)
		}
	}
	return out, nil
}

// conditionValues reads a condition value: a string, boolean or number, or an
// array of them.
func conditionValues(raw json.RawMessage) ([]string, error) {
	scalar := func(v any) (string, bool) {
		switch x := v.(type) {
		case string:
			return x, true
		case bool:
			return strconv.FormatBool(x), true
		case json.Number:
			return x.String(), true
		}
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if s, ok := scalar(v); ok {
		return []string{s}, nil
	}
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 {
		return nil, errors.New("a value must be a string, boolean or number, or a non-empty array of them")
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := scalar(e)
		if !ok {
			return nil, errors.New("an array value must hold strings, booleans or numbers")
		}
		out = append(out, s)
	}
	return out, nil
}
