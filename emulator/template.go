package emulator

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// The subset of AWS's provisioning template language the emulator evaluates:
// Parameters (Type String, Default), Resources of type AWS::IoT::Thing
// (ThingName, AttributePayload), AWS::IoT::Certificate (CertificateId, Status)
// and AWS::IoT::Policy (PolicyName of an existing policy, or PolicyDocument,
// attached to the new certificate), values written as literals, {"Ref": name}, {"Fn::Join": [sep,
// [values]]} or {"Fn::Sub": "text ${name}"}, and DeviceConfiguration.

type templateDoc struct {
	Parameters          map[string]templateParam    `json:"Parameters"`
	Resources           map[string]templateResource `json:"Resources"`
	DeviceConfiguration map[string]json.RawMessage  `json:"DeviceConfiguration"`
}

type templateParam struct {
	Type    string          `json:"Type"`
	Default json.RawMessage `json:"Default"`
}

type templateResource struct {
	Type       string                     `json:"Type"`
	Properties map[string]json.RawMessage `json:"Properties"`
}

const (
	resThing       = "AWS::IoT::Thing"
	resCertificate = "AWS::IoT::Certificate"
	resPolicy      = "AWS::IoT::Policy"
	// CertificateIDParameter is the parameter a template refers to the new
	// certificate's ID by.
	CertificateIDParameter = "AWS::IoT::Certificate::Id"
)

func parseTemplate(body json.RawMessage) (*templateDoc, error) {
	var doc templateDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: the template body is not an AWS provisioning template (JSON): %v", ErrInvalid, err)
	}
	if len(doc.Resources) == 0 {
		return nil, fmt.Errorf("%w: the template has no Resources", ErrInvalid)
	}
	things, certs := 0, 0
	for name, res := range doc.Resources {
		switch res.Type {
		case resThing:
			things++
			if _, ok := res.Properties["ThingName"]; !ok {
				return nil, fmt.Errorf("%w: resource %s (AWS::IoT::Thing) has no ThingName", ErrInvalid, name)
			}
		case resCertificate:
			certs++
		case resPolicy:
			if err := checkPolicyResource(name, res); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%w: resource %s has type %q; the emulator handles AWS::IoT::Thing, AWS::IoT::Certificate and AWS::IoT::Policy", ErrInvalid, name, res.Type)
		}
	}
	if things > 1 || certs > 1 {
		return nil, fmt.Errorf("%w: a template provisions one thing and one certificate", ErrInvalid)
	}
	if certs == 0 {
		return nil, fmt.Errorf("%w: the template has no AWS::IoT::Certificate resource, so the new certificate could never be activated", ErrInvalid)
	}
	for name, p := range doc.Parameters {
		if p.Type != "" && p.Type != "String" {
			return nil, fmt.Errorf("%w: parameter %s has Type %q; the emulator handles String", ErrInvalid, name, p.Type)
		}
	}
	return &doc, nil
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

// evalTemplate evaluates a template for the given parameters and certificate.
// Errors are the device's fault (a missing parameter) and become a 400 reply.
func evalTemplate(doc *templateDoc, params map[string]string, certID string, cert *x509.Certificate) (provisionPlan, error) {
	vals := map[string]string{}
	for name, p := range doc.Parameters {
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
		if !strings.HasPrefix(name, "AWS::") {
			return provisionPlan{}, fmt.Errorf("parameter %s is required by the template and was not given", name)
		}
	}
	vals[CertificateIDParameter] = certID
	if cert != nil {
		s := cert.Subject
		vals["AWS::IoT::Certificate::CommonName"] = s.CommonName
		vals["AWS::IoT::Certificate::SerialNumber"] = s.SerialNumber
		vals["AWS::IoT::Certificate::Country"] = first(s.Country)
		vals["AWS::IoT::Certificate::Organization"] = first(s.Organization)
		vals["AWS::IoT::Certificate::OrganizationalUnit"] = first(s.OrganizationalUnit)
		vals["AWS::IoT::Certificate::StateName"] = first(s.Province)
		vals["AWS::IoT::Certificate::Locality"] = first(s.Locality)
	}
	plan := provisionPlan{CertificateStatus: StatusActive}
	names := make([]string, 0, len(doc.Resources))
	for n := range doc.Resources {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		res := doc.Resources[name]
		switch res.Type {
		case resThing:
			tn, err := evalValue(res.Properties["ThingName"], vals)
			if err != nil {
				return provisionPlan{}, fmt.Errorf("resource %s ThingName: %w", name, err)
			}
			if !isThingName(tn) {
				return provisionPlan{}, fmt.Errorf("resource %s: thing name %q is not valid (1-128 letters, digits, ':', '_' or '-')", name, tn)
			}
			plan.ThingName = tn
			if raw, ok := res.Properties["AttributePayload"]; ok {
				attrs, err := evalAttributes(raw, vals)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s AttributePayload: %w", name, err)
				}
				plan.ThingAttributes = attrs
			}
		case resPolicy:
			p, err := evalPolicyResource(res, vals)
			if err != nil {
				return provisionPlan{}, fmt.Errorf("resource %s: %w", name, err)
			}
			plan.Policies = append(plan.Policies, p)
		case resCertificate:
			if raw, ok := res.Properties["CertificateId"]; ok {
				id, err := evalValue(raw, vals)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s CertificateId: %w", name, err)
				}
				if id != certID {
					return provisionPlan{}, fmt.Errorf("resource %s names certificate %s, not the one the ownership token is for", name, id)
				}
			}
			if raw, ok := res.Properties["Status"]; ok {
				st, err := evalValue(raw, vals)
				if err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s Status: %w", name, err)
				}
				if plan.CertificateStatus, err = ParseCertificateStatus(st); err != nil {
					return provisionPlan{}, fmt.Errorf("resource %s Status %q is not a certificate status", name, st)
				}
			}
		}
	}
	if len(doc.DeviceConfiguration) > 0 {
		plan.DeviceConfiguration = map[string]string{}
		for k, raw := range doc.DeviceConfiguration {
			v, err := evalValue(raw, vals)
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

// evalValue evaluates a template value to a string.
func evalValue(raw json.RawMessage, vals map[string]string) (string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return eval(v, vals)
}

func eval(v any, vals map[string]string) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case float64, bool:
		return fmt.Sprint(x), nil
	case map[string]any:
		if len(x) != 1 {
			return "", fmt.Errorf("a function object has exactly one key (Ref, Fn::Join or Fn::Sub)")
		}
		for fn, arg := range x {
			switch fn {
			case "Ref":
				name, ok := arg.(string)
				if !ok {
					return "", fmt.Errorf("Ref takes a parameter name")
				}
				val, ok := vals[name]
				if !ok {
					return "", fmt.Errorf("Ref to %s, which is not a parameter of the template", name)
				}
				return val, nil
			case "Fn::Join":
				args, ok := arg.([]any)
				if !ok || len(args) != 2 {
					return "", fmt.Errorf("Fn::Join takes [separator, [values]]")
				}
				sep, ok1 := args[0].(string)
				parts, ok2 := args[1].([]any)
				if !ok1 || !ok2 {
					return "", fmt.Errorf("Fn::Join takes [separator, [values]]")
				}
				out := make([]string, len(parts))
				for i, p := range parts {
					s, err := eval(p, vals)
					if err != nil {
						return "", err
					}
					out[i] = s
				}
				return strings.Join(out, sep), nil
			case "Fn::Sub":
				text, ok := arg.(string)
				if !ok {
					return "", fmt.Errorf("Fn::Sub takes a string")
				}
				return substitute(text, vals)
			default:
				return "", fmt.Errorf("%s is not supported by the emulator (it handles Ref, Fn::Join and Fn::Sub)", fn)
			}
		}
	}
	return "", fmt.Errorf("a value must be a string or a Ref, Fn::Join or Fn::Sub object")
}

func evalAttributes(raw json.RawMessage, vals map[string]string) (map[string]string, error) {
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
		s, err := eval(v, vals)
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

func evalPolicyResource(res templateResource, vals map[string]string) (planPolicy, error) {
	if raw, ok := res.Properties["PolicyName"]; ok {
		n, err := evalValue(raw, vals)
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
		if doc, err = evalValue(raw, vals); err != nil {
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
