package emulator

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// The subset of AWS's fleet-provisioning template language the emulator
// evaluates, and refuses beyond: Parameters (Type String, Default); Mappings
// (two levels, values strings or lists of strings); Conditions (Fn::Equals,
// Fn::Not, Fn::And, Fn::Or, {"Condition": name}); Resources of type
// AWS::IoT::Thing (ThingName, AttributePayload), AWS::IoT::Certificate
// (CertificateId, Status ACTIVE or INACTIVE) and AWS::IoT::Policy (PolicyName,
// PolicyDocument), each with an optional Condition; values written as literals,
// {"Ref": name}, Fn::Join, Fn::Sub, Fn::Select, Fn::Split, Fn::FindInMap and
// Fn::If; and DeviceConfiguration. A template that names anything else (a
// section, a resource type, a property, a function) is refused when it is
// created, with the name: silently ignoring it would provision a device
// differently from AWS.

// oidDNQualifier is the X.520 dnQualifier attribute (2.5.4.46).
var oidDNQualifier = asn1.ObjectIdentifier{2, 5, 4, 46}

type templateDoc struct {
	Parameters          map[string]templateParam             `json:"Parameters"`
	Mappings            map[string]map[string]map[string]any `json:"Mappings"`
	Conditions          map[string]any                       `json:"Conditions"`
	Resources           map[string]templateResource          `json:"Resources"`
	DeviceConfiguration map[string]json.RawMessage           `json:"DeviceConfiguration"`
}

type templateParam struct {
	Type    string          `json:"Type"`
	Default json.RawMessage `json:"Default"`
}

type templateResource struct {
	Type             string                     `json:"Type"`
	Properties       map[string]json.RawMessage `json:"Properties"`
	Condition        string                     `json:"Condition"`
	OverrideSettings json.RawMessage            `json:"OverrideSettings"`
}

const (
	resThing       = "AWS::IoT::Thing"
	resCertificate = "AWS::IoT::Certificate"
	resPolicy      = "AWS::IoT::Policy"
	// CertificateIDParameter is the parameter a template refers to the new
	// certificate's ID by.
	CertificateIDParameter = "AWS::IoT::Certificate::Id"
)

// The properties each resource type takes here, and those AWS has that the
// emulator does not act on yet (refused, saying so, rather than ignored).
var (
	resourceProperties = map[string][]string{
		resThing:       {"ThingName", "AttributePayload"},
		resCertificate: {"CertificateId", "Status"},
		resPolicy:      {"PolicyName", "PolicyDocument"},
	}
	notEmulatedProperties = map[string][]string{
		resThing:       {"ThingGroups", "ThingTypeName", "BillingGroup"},
		resCertificate: {"CertificateSigningRequest", "CertificatePem", "CACertificatePem"},
	}
)

// subjectParameters are the certificate's subject fields, which AWS offers to
// just-in-time provisioning templates only (the certificate is the device's
// own there); a fleet-provisioning template may not use them.
var subjectParameters = []string{
	"AWS::IoT::Certificate::CommonName", "AWS::IoT::Certificate::SerialNumber",
	"AWS::IoT::Certificate::Country", "AWS::IoT::Certificate::Organization",
	"AWS::IoT::Certificate::OrganizationalUnit", "AWS::IoT::Certificate::DistinguishedNameQualifier",
	"AWS::IoT::Certificate::StateName", "AWS::IoT::Certificate::Locality",
}

// templateKind says which provisioning a template is for: the certificate's
// subject fields are parameters only for just-in-time provisioning.
type templateKind int

const (
	fleetTemplate templateKind = iota
	jitpTemplate
)

var templateSections = []string{"Parameters", "Mappings", "Conditions", "Resources", "DeviceConfiguration"}

func parseTemplate(body json.RawMessage) (*templateDoc, error) {
	return parseTemplateFor(body, fleetTemplate)
}

func parseTemplateFor(body json.RawMessage, kind templateKind) (*templateDoc, error) {
	var sections map[string]json.RawMessage
	if err := json.Unmarshal(body, &sections); err != nil {
		return nil, fmt.Errorf("%w: the template body is not an AWS provisioning template (JSON): %v", ErrInvalid, err)
	}
	for name := range sections {
		if !slices.Contains(templateSections, name) {
			return nil, fmt.Errorf("%w: the template has a section %q; the emulator knows %s", ErrInvalid, name, strings.Join(templateSections, ", "))
		}
	}
	var doc templateDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: the template body is not an AWS provisioning template: %v", ErrInvalid, err)
	}
	if len(doc.Resources) == 0 {
		return nil, fmt.Errorf("%w: the template has no Resources", ErrInvalid)
	}
	for _, name := range sortedKeys(doc.Resources) {
		if err := checkResourceKeys(body, name); err != nil {
			return nil, err
		}
	}
	things, certs := 0, 0
	for _, name := range sortedKeys(doc.Resources) {
		res := doc.Resources[name]
		known, ok := resourceProperties[res.Type]
		if !ok {
			return nil, fmt.Errorf("%w: resource %s has type %q; the emulator handles AWS::IoT::Thing, AWS::IoT::Certificate and AWS::IoT::Policy", ErrInvalid, name, res.Type)
		}
		for _, prop := range sortedKeys(res.Properties) {
			if slices.Contains(known, prop) {
				continue
			}
			if slices.Contains(notEmulatedProperties[res.Type], prop) {
				return nil, fmt.Errorf("%w: resource %s (%s) property %s is not emulated yet; remove it, or provision against AWS IoT", ErrInvalid, name, res.Type, prop)
			}
			return nil, fmt.Errorf("%w: resource %s (%s) has property %q, which AWS does not define; it takes %s", ErrInvalid, name, res.Type, prop, strings.Join(known, ", "))
		}
		if len(res.OverrideSettings) > 0 {
			return nil, fmt.Errorf("%w: resource %s: OverrideSettings is not emulated yet; remove it", ErrInvalid, name)
		}
		if res.Condition != "" {
			if _, ok := doc.Conditions[res.Condition]; !ok {
				return nil, fmt.Errorf("%w: resource %s has Condition %q, which is not in the template's Conditions", ErrInvalid, name, res.Condition)
			}
		}
		switch res.Type {
		case resThing:
			things++
			if _, ok := res.Properties["ThingName"]; !ok {
				return nil, fmt.Errorf("%w: resource %s (AWS::IoT::Thing) has no ThingName", ErrInvalid, name)
			}
		case resCertificate:
			certs++
			if raw, ok := res.Properties["Status"]; ok {
				var lit string
				if json.Unmarshal(raw, &lit) == nil {
					if _, err := templateStatus(lit); err != nil {
						return nil, fmt.Errorf("%w: resource %s: %v", ErrInvalid, name, err)
					}
				}
			}
		case resPolicy:
			if err := checkPolicyResource(name, res); err != nil {
				return nil, err
			}
		}
	}
	if things > 1 || certs > 1 {
		return nil, fmt.Errorf("%w: a template provisions one thing and one certificate", ErrInvalid)
	}
	if certs == 0 {
		return nil, fmt.Errorf("%w: the template has no AWS::IoT::Certificate resource, so the new certificate could never be activated", ErrInvalid)
	}
	for _, name := range sortedKeys(doc.Parameters) {
		p := doc.Parameters[name]
		if p.Type != "" && p.Type != "String" {
			return nil, fmt.Errorf("%w: parameter %s has Type %q; the emulator handles String", ErrInvalid, name, p.Type)
		}
	}
	for m, top := range doc.Mappings {
		for k1, second := range top {
			for k2, v := range second {
				if _, err := asValue(v); err != nil {
					return nil, fmt.Errorf("%w: Mappings %s.%s.%s: %v", ErrInvalid, m, k1, k2, err)
				}
			}
		}
	}
	// Every function and reference is checked now, so a template that could
	// never work is refused when it is made, not at a device's RegisterThing.
	if err := walkTemplate(&doc, func(where string, v any) error { return checkFunctions(&doc, kind, where, v) }); err != nil {
		return nil, err
	}
	return &doc, nil
}

// checkResourceKeys refuses keys of a resource other than Type, Properties,
// Condition and OverrideSettings (Metadata, DependsOn... mean nothing here).
func checkResourceKeys(body json.RawMessage, name string) error {
	var top struct {
		Resources map[string]map[string]json.RawMessage `json:"Resources"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		return fmt.Errorf("%w: resource %s: %v", ErrInvalid, name, err)
	}
	for _, k := range sortedKeys(top.Resources[name]) {
		switch k {
		case "Type", "Properties", "Condition", "OverrideSettings":
		default:
			return fmt.Errorf("%w: resource %s has key %q; a resource takes Type, Properties, Condition and OverrideSettings", ErrInvalid, name, k)
		}
	}
	return nil
}

// walkTemplate calls fn on every value the template evaluates: resource
// properties, DeviceConfiguration entries and Conditions.
func walkTemplate(doc *templateDoc, fn func(where string, v any) error) error {
	for _, name := range sortedKeys(doc.Resources) {
		res := doc.Resources[name]
		for _, prop := range sortedKeys(res.Properties) {
			var v any
			if err := json.Unmarshal(res.Properties[prop], &v); err != nil {
				return fmt.Errorf("%w: resource %s %s: %v", ErrInvalid, name, prop, err)
			}
			if prop == "AttributePayload" || prop == "PolicyDocument" {
				continue // checked where they are evaluated (maps, JSON text)
			}
			if err := fn("resource "+name+" "+prop, v); err != nil {
				return err
			}
		}
	}
	for _, k := range sortedKeys(doc.DeviceConfiguration) {
		var v any
		if err := json.Unmarshal(doc.DeviceConfiguration[k], &v); err != nil {
			return fmt.Errorf("%w: DeviceConfiguration %s: %v", ErrInvalid, k, err)
		}
		if err := fn("DeviceConfiguration "+k, v); err != nil {
			return err
		}
	}
	return nil
}

// checkFunctions refuses unknown functions, references to subject fields in
// a fleet template, and Fn::If / Condition names that are not defined.
func checkFunctions(doc *templateDoc, kind templateKind, where string, v any) error {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if err := checkFunctions(doc, kind, where, e); err != nil {
				return err
			}
		}
	case map[string]any:
		if len(x) != 1 {
			return fmt.Errorf("%w: %s: a function object has exactly one key (%s)", ErrInvalid, where, strings.Join(templateFunctions, ", "))
		}
		for fn, arg := range x {
			if !slices.Contains(templateFunctions, fn) {
				return fmt.Errorf("%w: %s: function %s is not supported (the emulator handles %s)", ErrInvalid, where, fn, strings.Join(templateFunctions, ", "))
			}
			var names []string
			switch fn {
			case "Ref":
				if s, ok := arg.(string); ok {
					names = []string{s}
				}
			case "Fn::Sub":
				if s, ok := arg.(string); ok {
					names = subNames(s)
				}
			case "Fn::If":
				if args, ok := arg.([]any); ok && len(args) == 3 {
					if c, ok := args[0].(string); ok {
						if _, ok := doc.Conditions[c]; !ok {
							return fmt.Errorf("%w: %s: Fn::If names condition %q, which is not in the template's Conditions", ErrInvalid, where, c)
						}
					}
				}
			}
			for _, n := range names {
				if kind == fleetTemplate && slices.Contains(subjectParameters, n) {
					return fmt.Errorf("%w: %s refers to %s: AWS offers the certificate's subject fields to just-in-time provisioning templates only, not to fleet provisioning", ErrInvalid, where, n)
				}
			}
			if err := checkFunctions(doc, kind, where, arg); err != nil {
				return err
			}
		}
	}
	return nil
}

var templateFunctions = []string{"Ref", "Fn::Join", "Fn::Sub", "Fn::Select", "Fn::Split", "Fn::FindInMap", "Fn::If"}

// subNames lists the ${name} references of an Fn::Sub text.
func subNames(text string) []string {
	var out []string
	for {
		i := strings.Index(text, "${")
		if i < 0 {
			return out
		}
		j := strings.IndexByte(text[i+2:], '}')
		if j < 0 {
			return out
		}
		if j > 0 {
			out = append(out, text[i+2:i+2+j])
		}
		text = text[i+2+j+1:]
	}
}

// templateStatus reads a template's certificate Status: AWS takes ACTIVE or
// INACTIVE there (any case, as its examples write "Active").
func templateStatus(s string) (CertificateStatus, error) {
	switch st := CertificateStatus(strings.ToUpper(strings.TrimSpace(s))); st {
	case StatusActive, StatusInactive:
		return st, nil
	}
	return "", fmt.Errorf("certificate Status %q: a provisioning template sets ACTIVE or INACTIVE", s)
}

// provisionPlan is what a template says to do for one RegisterThing.
type provisionPlan struct {
	ThingName           string
	ThingAttributes     map[string]string
	CertificateStatus   CertificateStatus
	DeviceConfiguration map[string]string
	// Policies are attached to the certificate: existing ones by name, or
	// made from Document (named by PolicyName or a hash of the document).
	Policies []planPolicy
}

type planPolicy struct {
	Name     string
	Document string
}

// evalTemplate evaluates a fleet-provisioning template for the given
// parameters and certificate. Errors are the device's fault (a missing
// parameter) and become a 400 reply.
func evalTemplate(doc *templateDoc, params map[string]string, certID string, cert *x509.Certificate) (provisionPlan, error) {
	return evalTemplateFor(doc, fleetTemplate, params, certID, cert)
}

// evalTemplateFor evaluates a template of the given kind: the certificate's
// subject fields are parameters of just-in-time provisioning only.
func evalTemplateFor(doc *templateDoc, kind templateKind, params map[string]string, certID string, cert *x509.Certificate) (provisionPlan, error) {
	vals := map[string]string{CertificateIDParameter: certID}
	if cert != nil && kind == jitpTemplate {
		// The subject fields JITP offers, those the certificate has.
		s := cert.Subject
		dnq := ""
		for _, n := range s.Names {
			if n.Type.Equal(oidDNQualifier) {
				dnq, _ = n.Value.(string)
			}
		}
		for name, v := range map[string]string{
			"CommonName": s.CommonName, "SerialNumber": s.SerialNumber, "Country": first(s.Country),
			"Organization": first(s.Organization), "OrganizationalUnit": first(s.OrganizationalUnit),
			"StateName": first(s.Province), "Locality": first(s.Locality), "DistinguishedNameQualifier": dnq,
		} {
			if v != "" {
				vals["AWS::IoT::Certificate::"+name] = v
			}
		}
	}
	for name, p := range doc.Parameters {
		if _, ok := vals[name]; ok {
			continue
		}
		if v, ok := params[name]; ok {
			vals[name] = v
			continue
		}
		if len(p.Default) > 0 {
			var d string
			if err := json.Unmarshal(p.Default, &d); err != nil {
				return provisionPlan{}, fmt.Errorf("parameter %s has a Default that is not a string", name)
			}
			vals[name] = d
			continue
		}
		if field, ok := strings.CutPrefix(name, "AWS::IoT::Certificate::"); ok && kind == jitpTemplate {
			return provisionPlan{}, fmt.Errorf("parameter %s: the certificate's subject has no %s", name, field)
		}
		if !strings.HasPrefix(name, "AWS::") {
			return provisionPlan{}, fmt.Errorf("parameter %s is required by the template and was not given", name)
		}
	}
	ev := &evaluator{doc: doc, vals: vals, conds: map[string]bool{}}
	plan := provisionPlan{CertificateStatus: StatusActive}
	for _, name := range sortedKeys(doc.Resources) {
		res := doc.Resources[name]
		if res.Condition != "" {
			on, err := ev.condition(res.Condition)
			if err != nil {
				return provisionPlan{}, fmt.Errorf("resource %s Condition: %w", name, err)
			}
			if !on {
				continue
			}
		}
		switch res.Type {
		case resThing:
			tn, err := ev.evalRaw(res.Properties["ThingName"])
			if err != nil {
				return provisionPlan{}, fmt.Errorf("resource %s ThingName: %w", name, err)
			}
			if !isThingName(tn) {
				return provisionPlan{}, fmt.Errorf("resource %s: thing name %q is not valid (1-128 letters, digits, ':', '_' or '-')", name, tn)
			}
			plan.ThingName = tn
			if raw, ok := res.Properties["AttributePayload"]; ok {
				attrs, err := ev.attributes(raw)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s AttributePayload: %w", name, err)
				}
				plan.ThingAttributes = attrs
			}
		case resPolicy:
			p, err := evalPolicyResource(res, ev)
			if err != nil {
				return provisionPlan{}, fmt.Errorf("resource %s: %w", name, err)
			}
			plan.Policies = append(plan.Policies, p)
		case resCertificate:
			if raw, ok := res.Properties["CertificateId"]; ok {
				id, err := ev.evalRaw(raw)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s CertificateId: %w", name, err)
				}
				if id != certID {
					return provisionPlan{}, fmt.Errorf("resource %s names certificate %s, not the one the ownership token is for", name, id)
				}
			}
			if raw, ok := res.Properties["Status"]; ok {
				st, err := ev.evalRaw(raw)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s Status: %w", name, err)
				}
				if plan.CertificateStatus, err = templateStatus(st); err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s: %w", name, err)
				}
			}
		}
	}
	if len(doc.DeviceConfiguration) > 0 {
		plan.DeviceConfiguration = map[string]string{}
		for k, raw := range doc.DeviceConfiguration {
			v, err := ev.evalRaw(raw)
			if err != nil {
				return provisionPlan{}, fmt.Errorf("DeviceConfiguration %s: %w", k, err)
			}
			plan.DeviceConfiguration[k] = v
		}
	}
	return plan, nil
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// evaluator evaluates template values for one RegisterThing.
type evaluator struct {
	doc   *templateDoc
	vals  map[string]string
	conds map[string]bool
	// evaluating marks the conditions being evaluated: meeting one again is
	// a cycle, refused at once (exploring it to the depth bound could take
	// exponential time through Fn::And and Fn::Or).
	evaluating map[string]bool
	depth      int
}

// maxEvalDepth bounds nesting (functions and conditions), so a hostile
// template cannot exhaust the stack.
const maxEvalDepth = 64

// value is what a template expression yields: a string, or a list of strings
// (from Fn::Split, a list literal, or a list in Mappings).
type value struct {
	s      string
	list   []string
	isList bool
}

func asValue(v any) (value, error) {
	switch x := v.(type) {
	case string:
		return value{s: x}, nil
	case []any:
		out := value{isList: true}
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return value{}, fmt.Errorf("a list in Mappings holds strings only")
			}
			out.list = append(out.list, s)
		}
		return out, nil
	}
	return value{}, fmt.Errorf("a Mappings value is a string or a list of strings")
}

func (ev *evaluator) evalRaw(raw json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return ev.str(v)
}

// str evaluates v to a string.
func (ev *evaluator) str(v any) (string, error) {
	r, err := ev.eval(v)
	if err != nil {
		return "", err
	}
	if r.isList {
		return "", fmt.Errorf("a list (%q) where a string is needed; pick one element with Fn::Select", r.list)
	}
	return r.s, nil
}

// list evaluates v to a list of strings: a literal list or a function that
// yields one.
func (ev *evaluator) list(v any) ([]string, error) {
	if x, ok := v.([]any); ok {
		out := make([]string, len(x))
		for i, e := range x {
			s, err := ev.str(e)
			if err != nil {
				return nil, err
			}
			out[i] = s
		}
		return out, nil
	}
	r, err := ev.eval(v)
	if err != nil {
		return nil, err
	}
	if !r.isList {
		return nil, fmt.Errorf("a string (%q) where a list is needed", r.s)
	}
	return r.list, nil
}

func (ev *evaluator) eval(v any) (value, error) {
	ev.depth++
	defer func() { ev.depth-- }()
	if ev.depth > maxEvalDepth {
		return value{}, fmt.Errorf("functions nested deeper than %d", maxEvalDepth)
	}
	switch x := v.(type) {
	case string:
		return value{s: x}, nil
	case float64, bool:
		return value{s: fmt.Sprint(x)}, nil
	case []any:
		l, err := ev.list(x)
		return value{list: l, isList: true}, err
	case map[string]any:
		if len(x) != 1 {
			return value{}, fmt.Errorf("a function object has exactly one key (%s)", strings.Join(templateFunctions, ", "))
		}
		for fn, arg := range x {
			return ev.call(fn, arg)
		}
	}
	return value{}, fmt.Errorf("a value must be a string or one of %s", strings.Join(templateFunctions, ", "))
}

func (ev *evaluator) call(fn string, arg any) (value, error) {
	args, _ := arg.([]any)
	switch fn {
	case "Ref":
		name, ok := arg.(string)
		if !ok {
			return value{}, fmt.Errorf("Ref takes a parameter name")
		}
		val, ok := ev.vals[name]
		if !ok {
			return value{}, fmt.Errorf("Ref to %s, which is not a parameter of the template", name)
		}
		return value{s: val}, nil
	case "Fn::Join":
		if len(args) != 2 {
			return value{}, fmt.Errorf("Fn::Join takes [separator, [values]]")
		}
		sep, ok := args[0].(string)
		if !ok {
			return value{}, fmt.Errorf("Fn::Join takes [separator, [values]]")
		}
		parts, err := ev.list(args[1])
		if err != nil {
			return value{}, fmt.Errorf("Fn::Join: %w", err)
		}
		return value{s: strings.Join(parts, sep)}, nil
	case "Fn::Sub":
		text, ok := arg.(string)
		if !ok {
			return value{}, fmt.Errorf("Fn::Sub takes a string (the [string, {variables}] form is not emulated)")
		}
		s, err := substitute(text, ev.vals)
		return value{s: s}, err
	case "Fn::Split":
		if len(args) != 2 {
			return value{}, fmt.Errorf("Fn::Split takes [delimiter, source string]")
		}
		sep, ok := args[0].(string)
		if !ok || sep == "" {
			return value{}, fmt.Errorf("Fn::Split takes a non-empty delimiter string")
		}
		src, err := ev.str(args[1])
		if err != nil {
			return value{}, fmt.Errorf("Fn::Split: %w", err)
		}
		return value{list: strings.Split(src, sep), isList: true}, nil
	case "Fn::Select":
		if len(args) != 2 {
			return value{}, fmt.Errorf("Fn::Select takes [index, list]")
		}
		idx, err := ev.index(args[0])
		if err != nil {
			return value{}, err
		}
		l, err := ev.list(args[1])
		if err != nil {
			return value{}, fmt.Errorf("Fn::Select: %w", err)
		}
		if idx >= len(l) {
			return value{}, fmt.Errorf("Fn::Select index %d is out of range (the list has %d elements)", idx, len(l))
		}
		return value{s: l[idx]}, nil
	case "Fn::FindInMap":
		if len(args) != 3 {
			return value{}, fmt.Errorf("Fn::FindInMap takes [MapName, TopLevelKey, SecondLevelKey]")
		}
		var keys [3]string
		for i, a := range args {
			s, err := ev.str(a)
			if err != nil {
				return value{}, fmt.Errorf("Fn::FindInMap: %w", err)
			}
			keys[i] = s
		}
		m, ok := ev.doc.Mappings[keys[0]]
		if !ok {
			return value{}, fmt.Errorf("Fn::FindInMap: no mapping %q in Mappings", keys[0])
		}
		second, ok := m[keys[1]]
		if !ok {
			return value{}, fmt.Errorf("Fn::FindInMap: mapping %s has no key %q", keys[0], keys[1])
		}
		v, ok := second[keys[2]]
		if !ok {
			return value{}, fmt.Errorf("Fn::FindInMap: mapping %s.%s has no key %q", keys[0], keys[1], keys[2])
		}
		return asValue(v)
	case "Fn::If":
		if len(args) != 3 {
			return value{}, fmt.Errorf("Fn::If takes [condition name, value if true, value if false]")
		}
		name, ok := args[0].(string)
		if !ok {
			return value{}, fmt.Errorf("Fn::If takes a condition name first")
		}
		on, err := ev.condition(name)
		if err != nil {
			return value{}, err
		}
		if on {
			return ev.eval(args[1])
		}
		return ev.eval(args[2])
	}
	return value{}, fmt.Errorf("%s is not supported by the emulator (it handles %s)", fn, strings.Join(templateFunctions, ", "))
}

func (ev *evaluator) index(v any) (int, error) {
	var s string
	switch x := v.(type) {
	case float64:
		if x != float64(int(x)) || x < 0 {
			return 0, fmt.Errorf("Fn::Select index %v is not a whole number", x)
		}
		return int(x), nil
	default:
		var err error
		if s, err = ev.str(v); err != nil {
			return 0, fmt.Errorf("Fn::Select index: %w", err)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("Fn::Select index %q is not a whole number", s)
	}
	return n, nil
}

// condition evaluates a named condition of the Conditions section.
func (ev *evaluator) condition(name string) (bool, error) {
	if on, ok := ev.conds[name]; ok {
		return on, nil
	}
	def, ok := ev.doc.Conditions[name]
	if !ok {
		return false, fmt.Errorf("condition %q is not in the template's Conditions", name)
	}
	if ev.evaluating[name] {
		return false, fmt.Errorf("condition %s refers to itself", name)
	}
	if ev.evaluating == nil {
		ev.evaluating = map[string]bool{}
	}
	ev.evaluating[name] = true
	defer delete(ev.evaluating, name)
	ev.depth++
	defer func() { ev.depth-- }()
	if ev.depth > maxEvalDepth {
		return false, fmt.Errorf("conditions nested deeper than %d (a condition that refers to itself?)", maxEvalDepth)
	}
	on, err := ev.boolean(def)
	if err != nil {
		return false, fmt.Errorf("condition %s: %w", name, err)
	}
	ev.conds[name] = on
	return on, nil
}

// boolean evaluates a condition function: Fn::Equals, Fn::Not, Fn::And,
// Fn::Or or {"Condition": name}.
func (ev *evaluator) boolean(v any) (bool, error) {
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return false, fmt.Errorf("a condition is one of Fn::Equals, Fn::Not, Fn::And, Fn::Or or Condition")
	}
	ev.depth++
	defer func() { ev.depth-- }()
	if ev.depth > maxEvalDepth {
		return false, fmt.Errorf("conditions nested deeper than %d", maxEvalDepth)
	}
	for fn, arg := range m {
		args, _ := arg.([]any)
		switch fn {
		case "Condition":
			name, ok := arg.(string)
			if !ok {
				return false, fmt.Errorf("Condition takes a condition name")
			}
			return ev.condition(name)
		case "Fn::Equals":
			if len(args) != 2 {
				return false, fmt.Errorf("Fn::Equals takes [value, value]")
			}
			a, err := ev.str(args[0])
			if err != nil {
				return false, err
			}
			b, err := ev.str(args[1])
			if err != nil {
				return false, err
			}
			return a == b, nil
		case "Fn::Not":
			if len(args) != 1 {
				return false, fmt.Errorf("Fn::Not takes [condition]")
			}
			on, err := ev.boolean(args[0])
			return !on, err
		case "Fn::And", "Fn::Or":
			if len(args) < 2 || len(args) > 10 {
				return false, fmt.Errorf("%s takes 2 to 10 conditions", fn)
			}
			for _, a := range args {
				on, err := ev.boolean(a)
				if err != nil {
					return false, err
				}
				if fn == "Fn::And" && !on {
					return false, nil
				}
				if fn == "Fn::Or" && on {
					return true, nil
				}
			}
			return fn == "Fn::And", nil
		}
		return false, fmt.Errorf("%s is not a condition function (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)", fn)
	}
	return false, nil
}

func (ev *evaluator) attributes(raw json.RawMessage) (map[string]string, error) {
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		return nil, err
	}
	// AWS writes {"version": "v1", "attributes": {...}} or the attributes directly.
	src := payload
	if attrs, ok := payload["attributes"].(map[string]any); ok {
		src = attrs
	}
	out := map[string]string{}
	for k, v := range src {
		s, err := ev.str(v)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", k, err)
		}
		out[k] = s
	}
	return out, nil
}

// SimpleTemplate is the body of a common template: the thing is named
// thingNamePrefix followed by the value of the parameter thingNameParameter
// (e.g. "sensor-" and "SerialNumber"), the new certificate is attached to it,
// activated, and given the least-privilege DevicePolicy (for any template
// name). An empty prefix names the thing by the parameter alone.
func SimpleTemplate(thingNamePrefix, thingNameParameter string) json.RawMessage {
	var thingName any = map[string]any{"Ref": thingNameParameter}
	if thingNamePrefix != "" {
		thingName = map[string]any{"Fn::Join": []any{"", []any{thingNamePrefix, map[string]any{"Ref": thingNameParameter}}}}
	}
	body := map[string]any{
		"Parameters": map[string]any{
			thingNameParameter:     map[string]any{"Type": "String"},
			CertificateIDParameter: map[string]any{"Type": "String"},
		},
		"Resources": map[string]any{
			"thing": map[string]any{
				"Type":       resThing,
				"Properties": map[string]any{"ThingName": thingName},
			},
			"certificate": map[string]any{
				"Type": resCertificate,
				"Properties": map[string]any{
					"CertificateId": map[string]any{"Ref": CertificateIDParameter},
					"Status":        "Active",
				},
			},
			// AWS IoT refuses a certificate without a policy at CONNECT.
			"policy": map[string]any{
				"Type":       resPolicy,
				"Properties": map[string]any{"PolicyDocument": DevicePolicy("*")},
			},
		},
	}
	b, _ := json.MarshalIndent(body, "", "  ")
	return b
}

// substitute replaces each ${name} in text with its parameter value, as
// CloudFormation's Fn::Sub does.
func substitute(text string, vals map[string]string) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(text, "${")
		if i < 0 {
			b.WriteString(text)
			return b.String(), nil
		}
		j := strings.IndexByte(text[i+2:], '}')
		if j < 0 {
			b.WriteString(text)
			return b.String(), nil
		}
		if j == 0 { // "${}" names nothing and stays as it is
			b.WriteString(text[:i+3])
			text = text[i+3:]
			continue
		}
		name := text[i+2 : i+2+j]
		val, ok := vals[name]
		if !ok {
			return "", fmt.Errorf("Fn::Sub refers to %s, which is not a parameter of the template", name)
		}
		b.WriteString(text[:i])
		b.WriteString(val)
		text = text[i+2+j+1:]
	}
}

// checkPolicyResource checks an AWS::IoT::Policy resource when the template is
// created: PolicyName or PolicyDocument, not both, and a literal document
// must be one AWS IoT accepts.
func checkPolicyResource(name string, res templateResource) error {
	_, hasName := res.Properties["PolicyName"]
	raw, hasDoc := res.Properties["PolicyDocument"]
	if hasName == hasDoc {
		return fmt.Errorf("%w: resource %s (AWS::IoT::Policy) takes PolicyName or PolicyDocument, one of them", ErrInvalid, name)
	}
	if hasDoc {
		doc, literal, err := policyDocument(raw)
		if err != nil {
			return fmt.Errorf("%w: resource %s PolicyDocument: %v", ErrInvalid, name, err)
		}
		if literal {
			if _, err := iotpolicy.Parse(doc); err != nil {
				return fmt.Errorf("%w: resource %s PolicyDocument: %w", ErrInvalid, name, err)
			}
		}
	}
	return nil
}

// policyDocument reads a PolicyDocument: AWS writes it as a JSON string; a
// JSON object is taken as the document too. literal is false for a Ref or
// function, whose value is known only at RegisterThing.
func policyDocument(raw json.RawMessage) (doc string, literal bool, err error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", false, fmt.Errorf("a policy document is a JSON string (or object)")
	}
	if _, fn := obj["Ref"]; fn || len(obj) == 1 && strings.HasPrefix(firstKey(obj), "Fn::") {
		return "", false, nil
	}
	return string(raw), true, nil
}

func firstKey(m map[string]json.RawMessage) string {
	for k := range m {
		return k
	}
	return ""
}

func evalPolicyResource(res templateResource, ev *evaluator) (planPolicy, error) {
	if raw, ok := res.Properties["PolicyName"]; ok {
		n, err := ev.evalRaw(raw)
		if err != nil {
			return planPolicy{}, fmt.Errorf("PolicyName: %w", err)
		}
		return planPolicy{Name: n}, nil
	}
	raw := res.Properties["PolicyDocument"]
	doc, literal, err := policyDocument(raw)
	if err != nil {
		return planPolicy{}, fmt.Errorf("PolicyDocument: %w", err)
	}
	if !literal {
		if doc, err = ev.evalRaw(raw); err != nil {
			return planPolicy{}, fmt.Errorf("PolicyDocument: %w", err)
		}
	}
	if _, err := iotpolicy.Parse(doc); err != nil {
		return planPolicy{}, fmt.Errorf("PolicyDocument: %w", err)
	}
	// AWS names a policy made from a template by a hash of its document.
	sum := sha256.Sum256([]byte(doc))
	return planPolicy{Name: hex.EncodeToString(sum[:]), Document: doc}, nil
}
