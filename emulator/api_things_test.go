package emulator

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

func TestAPIDescribeEndpoint(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod", "dev")
	ctx := context.Background()
	for _, account := range []string{"prod", "dev"} {
		out, err := newAPIClient(t, e.Emulator, account).DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := aws.ToString(out.EndpointAddress), e.Endpoint(account); got != want || want == "" {
			t.Errorf("account %s: endpoint %q, want %q", account, got, want)
		}
	}
	_, err := newAPIClient(t, e.Emulator, "prod").DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:CredentialProvider")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
}

func TestAPIThings(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod", "dev")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	attrs := map[string]string{"model": "gw-1", "site": "berlin"}
	created, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-001"), AttributePayload: &types.AttributePayload{Attributes: attrs}})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(created.ThingName) != "gw-001" || !strings.HasPrefix(aws.ToString(created.ThingArn), "arn:aws:iot:us-east-1:") || !strings.HasSuffix(aws.ToString(created.ThingArn), ":thing/gw-001") || aws.ToString(created.ThingId) == "" {
		t.Errorf("CreateThing: %+v", created)
	}
	// The same call again succeeds (AWS: idempotent); other attributes do not.
	again, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-001"), AttributePayload: &types.AttributePayload{Attributes: attrs}})
	if err != nil || aws.ToString(again.ThingId) != aws.ToString(created.ThingId) {
		t.Fatalf("CreateThing again: %+v, %v", again, err)
	}
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-001")})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("bad name")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-002"), AttributePayload: &types.AttributePayload{Attributes: map[string]string{"note": "has spaces"}}})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("typed"), ThingTypeName: aws.String("Gateway")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	d, err := c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-001")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(d.ThingName) != "gw-001" || aws.ToString(d.ThingArn) != aws.ToString(created.ThingArn) || aws.ToString(d.ThingId) != aws.ToString(created.ThingId) ||
		aws.ToString(d.DefaultClientId) != "gw-001" || d.Version != 1 || !maps.Equal(d.Attributes, attrs) {
		t.Errorf("DescribeThing: %+v", d)
	}
	// Accounts are apart: dev has no gw-001.
	_, err = newAPIClient(t, e.Emulator, "dev").DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-001")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	// The admin API sees what the control plane made.
	if th, err := e.Thing(ctx, "prod", "gw-001"); err != nil || !maps.Equal(th.Attributes, attrs) {
		t.Errorf("registry: %+v, %v", th, err)
	}

	if _, err := c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-001"), ExpectedVersion: aws.Int64(7)}); err == nil {
		t.Fatal("DeleteThing with a wrong expected version succeeded")
	} else {
		wantAPIError(t, err, "VersionConflictException", http.StatusConflict)
	}
	if _, err := c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-001")}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-001")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	// An operation the emulator does not implement.
	_, err = c.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String("gw-001")})
	wantAPIError(t, err, "UnknownOperationException", http.StatusNotFound)
	// AWS: deleting a thing that does not exist succeeds.
	if _, err := c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-001")}); err != nil {
		t.Errorf("DeleteThing of a missing thing: %v", err)
	}
}

func TestAPIListThingsPaginates(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	const n = 613
	want := map[string]bool{}
	for i := range n {
		name := fmt.Sprintf("thing-%04d", i)
		var attrs map[string]string
		if i%3 == 0 {
			attrs = map[string]string{"site": fmt.Sprintf("site-%d", i%2)}
		}
		if _, err := e.CreateThing(ctx, "prod", name, attrs); err != nil {
			t.Fatal(err)
		}
		want[name] = true
	}
	c := newAPIClient(t, e.Emulator, "prod")
	got := map[string]bool{}
	pages := 0
	p := iot.NewListThingsPaginator(c, &iot.ListThingsInput{MaxResults: aws.Int32(100)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(out.Things) > 100 {
			t.Fatalf("page of %d things, asked for 100", len(out.Things))
		}
		for _, th := range out.Things {
			name := aws.ToString(th.ThingName)
			if got[name] {
				t.Fatalf("%s on two pages", name)
			}
			got[name] = true
			if !strings.HasSuffix(aws.ToString(th.ThingArn), ":thing/"+name) || th.Version != 1 {
				t.Errorf("thing %+v", th)
			}
		}
	}
	if !maps.Equal(got, want) || pages != 7 {
		t.Errorf("%d things in %d pages, want %d in 7", len(got), pages, n)
	}

	// A filter is applied across pages: site-0 is every 6th thing.
	count := 0
	p = iot.NewListThingsPaginator(c, &iot.ListThingsInput{MaxResults: aws.Int32(10), AttributeName: aws.String("site"), AttributeValue: aws.String("site-0")})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, th := range out.Things {
			if th.Attributes["site"] != "site-0" {
				t.Errorf("filtered list has %+v", th)
			}
			count++
		}
	}
	if count != (n+5)/6 {
		t.Errorf("site-0: %d things, want %d", count, (n+5)/6)
	}

	_, err := c.ListThings(ctx, &iot.ListThingsInput{MaxResults: aws.Int32(251)})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.ListThings(ctx, &iot.ListThingsInput{NextToken: aws.String("!!not-a-token")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
}

func TestAPIPrincipalListsPaginate(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	for _, th := range []string{"a", "b", "c"} {
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	var arns []string
	for range 3 {
		kc, err := c.CreateKeysAndCertificate(ctx, &iot.CreateKeysAndCertificateInput{})
		if err != nil {
			t.Fatal(err)
		}
		arns = append(arns, aws.ToString(kc.CertificateArn))
		if _, err := c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("a"), Principal: kc.CertificateArn}); err != nil {
			t.Fatal(err)
		}
	}
	for _, th := range []string{"b", "c"} {
		if _, err := c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String(th), Principal: aws.String(arns[0])}); err != nil {
			t.Fatal(err)
		}
	}
	var principals []string
	p := iot.NewListThingPrincipalsPaginator(c, &iot.ListThingPrincipalsInput{ThingName: aws.String("a"), MaxResults: aws.Int32(2)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Principals) > 2 {
			t.Fatalf("page of %d", len(out.Principals))
		}
		principals = append(principals, out.Principals...)
	}
	shared := arns[0] // attached to a, b and c
	arns = slices.Sorted(slices.Values(arns))
	if !slices.Equal(principals, arns) {
		t.Errorf("principals of a: %v, want %v", principals, arns)
	}
	var things []string
	pages := 0
	q := iot.NewListPrincipalThingsPaginator(c, &iot.ListPrincipalThingsInput{Principal: aws.String(shared), MaxResults: aws.Int32(2)})
	for q.HasMorePages() {
		out, err := q.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		things = append(things, out.Things...)
		pages++
	}
	if !slices.Equal(things, []string{"a", "b", "c"}) || pages != 2 {
		t.Errorf("things of %s: %v in %d pages, want a b c in 2", shared, things, pages)
	}
	_, err := c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
}
