package emulator

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
)

// AWS IoT's endpoint types. The emulator serves only the ATS data endpoint.
const endpointDataATS = "iot:Data-ATS"

func apiDescribeEndpoint(ctx context.Context, c *apiCall) (any, error) {
	switch t := c.Query("endpointType"); t {
	case endpointDataATS:
		return map[string]string{"endpointAddress": c.Emu.Endpoint(c.Account)}, nil
	case "", "iot:Data":
		// AWS answers the legacy Symantec-signed endpoint here, which no
		// current device should use; the emulator does not serve one.
		return nil, invalidRequest("the emulator serves only the %s endpoint; ask for endpointType %s (AWS answers %q with the legacy VeriSign endpoint)", endpointDataATS, endpointDataATS, t)
	default:
		return nil, invalidRequest("endpointType %q: the emulator serves only %s", t, endpointDataATS)
	}
}

// thingVersion is every thing's version: the emulator has no UpdateThing, so
// a thing stays at the version CreateThing gives it.
const thingVersion = 1

// thingID is a thing's UUID-shaped ID, stable for one thing of one account.
func thingID(account string, t Thing) string {
	s := sha256.Sum256([]byte(account + "\x00" + t.Name + "\x00" + t.CreatedAt.UTC().String()))
	return fmt.Sprintf("%x-%x-%x-%x-%x", s[0:4], s[4:6], s[6:8], s[8:10], s[10:16])
}

// thingAttributes is a thing's attributes as AWS writes them: {} when none.
func thingAttributes(t Thing) map[string]string {
	if t.Attributes == nil {
		return map[string]string{}
	}
	return t.Attributes
}

// checkAttributes applies the attribute patterns of AWS's API model: names of
// 1-128 and values of 0-800 characters of [a-zA-Z0-9_.,@/:#-]; and at most 50.
func checkAttributes(attrs map[string]string) error {
	const allowed = "_.,@/:#-"
	if len(attrs) > 50 {
		return invalidRequest("%d attributes: a thing has at most 50", len(attrs))
	}
	for k, v := range attrs {
		if !isName(k, 128, allowed) {
			return invalidRequest("attribute name %q: use 1-128 letters, digits or %s", k, allowed)
		}
		if v != "" && !isName(v, 800, allowed) {
			return invalidRequest("attribute %s value %q: use up to 800 letters, digits or %s", k, v, allowed)
		}
	}
	return nil
}

func apiCreateThing(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		AttributePayload *struct {
			Attributes map[string]string `json:"attributes"`
		} `json:"attributePayload"`
		ThingTypeName    string `json:"thingTypeName"`
		BillingGroupName string `json:"billingGroupName"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	name := c.Path("thingName")
	if in.ThingTypeName != "" {
		return nil, apiErrorf("ResourceNotFoundException", http.StatusNotFound, "thing type %q does not exist (the emulator has no thing types)", in.ThingTypeName)
	}
	if in.BillingGroupName != "" {
		return nil, apiErrorf("ResourceNotFoundException", http.StatusNotFound, "billing group %q does not exist (the emulator has no billing groups)", in.BillingGroupName)
	}
	var attrs map[string]string
	if in.AttributePayload != nil && len(in.AttributePayload.Attributes) > 0 {
		attrs = in.AttributePayload.Attributes
	}
	if err := checkAttributes(attrs); err != nil {
		return nil, err
	}
	t, err := c.Emu.CreateThing(ctx, c.Account, name, attrs)
	if errors.Is(err, ErrExists) {
		// AWS: the same call again succeeds; a different configuration is
		// ResourceAlreadyExistsException.
		old, gerr := c.Emu.Thing(ctx, c.Account, name)
		if gerr != nil || !maps.Equal(old.Attributes, attrs) {
			return nil, err
		}
		t, err = old, nil
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"thingName": t.Name, "thingArn": c.ARN("thing/" + t.Name), "thingId": thingID(c.Account, t)}, nil
}

func apiDescribeThing(ctx context.Context, c *apiCall) (any, error) {
	t, err := c.Emu.Thing(ctx, c.Account, c.Path("thingName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"thingName":       t.Name,
		"thingArn":        c.ARN("thing/" + t.Name),
		"thingId":         thingID(c.Account, t),
		"defaultClientId": t.Name,
		"attributes":      thingAttributes(t),
		"version":         thingVersion,
	}, nil
}

type thingAttributeJSON struct {
	ThingName  string            `json:"thingName"`
	ThingArn   string            `json:"thingArn"`
	Attributes map[string]string `json:"attributes"`
	Version    int64             `json:"version"`
}

func apiListThings(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("maxResults", 1, 250, 50)
	if err != nil {
		return nil, err
	}
	prefix, err := c.QueryBool("usePrefixAttributeValue", false)
	if err != nil {
		return nil, err
	}
	attr, value := c.Query("attributeName"), c.Query("attributeValue")
	filter := func(t Thing) bool {
		if attr == "" {
			return true
		}
		v, ok := t.Attributes[attr]
		if !ok {
			return false
		}
		if prefix {
			return strings.HasPrefix(v, value)
		}
		return value == "" || v == value
	}
	if c.Query("thingTypeName") != "" {
		// No thing types, so no thing has one.
		filter = func(Thing) bool { return false }
	}
	page, next, err := c.Emu.thingsPage(ctx, c.Account, c.Query("nextToken"), size, filter)
	if err != nil {
		return nil, err
	}
	out := struct {
		Things    []thingAttributeJSON `json:"things"`
		NextToken string               `json:"nextToken,omitempty"`
	}{Things: make([]thingAttributeJSON, 0, len(page)), NextToken: next}
	for _, t := range page {
		out.Things = append(out.Things, thingAttributeJSON{ThingName: t.Name, ThingArn: c.ARN("thing/" + t.Name), Attributes: thingAttributes(t), Version: thingVersion})
	}
	return out, nil
}

func apiDeleteThing(ctx context.Context, c *apiCall) (any, error) {
	if v := c.Query("expectedVersion"); v != "" && v != fmt.Sprint(thingVersion) {
		return nil, apiErrorf("VersionConflictException", http.StatusConflict, "thing %s is at version %d, not %s", c.Path("thingName"), thingVersion, v)
	}
	return nil, c.Emu.DeleteThing(ctx, c.Account, c.Path("thingName"))
}

// certificateFromPrincipal reads a certificate ARN (the principal of
// AttachThingPrincipal and its kind) of the caller's account.
func (c *apiCall) certificateFromPrincipal(principal string) (string, error) {
	if principal == "" {
		return "", invalidRequest("the principal (header x-amzn-principal) is required: a certificate ARN")
	}
	prefix := c.ARN("cert/")
	id, ok := strings.CutPrefix(principal, prefix)
	if !ok || !isName(id, 64, "") {
		return "", invalidRequest("principal %q is not a certificate ARN of this account (%s<certificateId>); the emulator knows no other principals", principal, prefix)
	}
	return id, nil
}

func apiAttachThingPrincipal(ctx context.Context, c *apiCall) (any, error) {
	id, err := c.certificateFromPrincipal(c.Header("x-amzn-principal"))
	if err != nil {
		return nil, err
	}
	if t := c.Query("thingPrincipalType"); t != "" && t != "NON_EXCLUSIVE_THING" {
		return nil, invalidRequest("thingPrincipalType %q: the emulator supports only NON_EXCLUSIVE_THING", t)
	}
	return nil, c.Emu.AttachCertificate(ctx, c.Account, c.Path("thingName"), id)
}

func apiDetachThingPrincipal(ctx context.Context, c *apiCall) (any, error) {
	id, err := c.certificateFromPrincipal(c.Header("x-amzn-principal"))
	if err != nil {
		return nil, err
	}
	return nil, c.Emu.DetachCertificate(ctx, c.Account, c.Path("thingName"), id)
}

func apiListThingPrincipals(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("maxResults", 1, 250, 25)
	if err != nil {
		return nil, err
	}
	t, err := c.Emu.Thing(ctx, c.Account, c.Path("thingName"))
	if err != nil {
		return nil, err
	}
	arns := make([]string, len(t.Certificates))
	for i, id := range t.Certificates {
		arns[i] = c.ARN("cert/" + id)
	}
	page, next, err := pageOf(arns, func(s string) string { return s }, c.Query("nextToken"), size)
	if err != nil {
		return nil, err
	}
	return struct {
		Principals []string `json:"principals"`
		NextToken  string   `json:"nextToken,omitempty"`
	}{page, next}, nil
}

func apiListPrincipalThings(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("maxResults", 1, 250, 25)
	if err != nil {
		return nil, err
	}
	id, err := c.certificateFromPrincipal(c.Header("x-amzn-principal"))
	if err != nil {
		return nil, err
	}
	cert, err := c.Emu.Certificate(ctx, c.Account, id)
	if err != nil {
		return nil, err
	}
	things := cert.Things
	if things == nil {
		things = []string{}
	}
	page, next, err := pageOf(things, func(s string) string { return s }, c.Query("nextToken"), size)
	if err != nil {
		return nil, err
	}
	return struct {
		Things    []string `json:"things"`
		NextToken string   `json:"nextToken,omitempty"`
	}{page, next}, nil
}
