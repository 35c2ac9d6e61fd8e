package emulator

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// aTemplate is a valid fleet template with extra thing properties and
// resources spliced in.
func aTemplate(thingProps, certProps, extra string) json.RawMessage {
	return json.RawMessage(`{
	  "Parameters": {"Serial": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
	  "Resources": {` + extra + `
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Serial"}` + thingProps + `}},
	    "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}` + certProps + `}}
	  }
	}`)
}

func TestTemplateRefusesWhatItDoesNotEmulate(t *testing.T) {
	if _, err := parseTemplate(aTemplate("", `, "Status": "Active"`, "")); err != nil {
		t.Fatalf("the base template: %v", err)
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"status PENDING_ACTIVATION", string(aTemplate("", `, "Status": "PENDING_ACTIVATION"`, "")), "ACTIVE or INACTIVE"},
		{"status REVOKED", string(aTemplate("", `, "Status": "REVOKED"`, "")), "ACTIVE or INACTIVE"},
		{"ThingGroups", string(aTemplate(`, "ThingGroups": ["g"]`, "", "")), "ThingGroups is not emulated"},
		{"ThingTypeName", string(aTemplate(`, "ThingTypeName": "t"`, "", "")), "ThingTypeName is not emulated"},
		{"BillingGroup", string(aTemplate(`, "BillingGroup": "b"`, "", "")), "BillingGroup is not emulated"},
		{"unknown thing property", string(aTemplate(`, "Colour": "red"`, "", "")), `"Colour"`},
		{"unknown certificate property", string(aTemplate("", `, "Expiry": "2030"`, "")), `"Expiry"`},
		{"CSR property (JITP/bulk only)", string(aTemplate("", `, "CertificateSigningRequest": "x"`, "")), "CertificateSigningRequest is not emulated"},
		{"unknown resource type", string(aTemplate("", "", `"b": {"Type": "AWS::S3::Bucket"},`)), `"AWS::S3::Bucket"`},
		{"unknown resource key", string(aTemplate("", "", `"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "p"}, "DependsOn": "thing"},`)), `"DependsOn"`},
		{"OverrideSettings", string(aTemplate("", "", `"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "p"}, "OverrideSettings": {}},`)), "OverrideSettings is not emulated"},
		{"unknown section", `{"Outputs": {}, "Resources": {"cert": {"Type": "AWS::IoT::Certificate", "Properties": {}}}}`, `"Outputs"`},
		{"unknown function", string(aTemplate(`, "AttributePayload": {}`, "", `"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Fn::Base64": "x"}}},`)), "Fn::Base64"},
		{"undefined condition", string(aTemplate("", "", `"p": {"Type": "AWS::IoT::Policy", "Condition": "nope", "Properties": {"PolicyName": "p"}},`)), `"nope"`},
		{"subject field in a fleet template", string(aTemplate("", "", `"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},`)), "just-in-time provisioning templates only"},
		{"subject field through Fn::Sub", string(aTemplate("", "", `"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Fn::Sub": "p-${AWS::IoT::Certificate::Organization}"}}},`)), "AWS::IoT::Certificate::Organization"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTemplate(json.RawMessage(tc.body))
			if err == nil {
				t.Fatalf("template accepted:\n%s", tc.body)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q; want ErrInvalid naming %s", err, tc.want)
			}
		})
	}
	// The registry refuses them when the template is created.
	r, err := Open(ctx, storeChecked(t, Config{Accounts: []Account{{Name: "A", Prefix: "aaaa"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.CreateTemplate(ctx, "A", Template{Name: "groups", Body: aTemplate(`, "ThingGroups": ["g"]`, "", "")})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "ThingGroups") {
		t.Errorf("CreateTemplate with ThingGroups: %v", err)
	}
}

func TestTemplateMappingsSelectSplitAndConditions(t *testing.T) {
	body := json.RawMessage(`{
	  "Parameters": {
	    "Serial": {"Type": "String"}, "Model": {"Type": "String", "Default": "m1"},
	    "Tags": {"Type": "String", "Default": "eu,west,7"}, "AWS::IoT::Certificate::Id": {"Type": "String"}
	  },
	  "Mappings": {
	    "Models": {
	      "m1": {"Prefix": "sensor", "Sites": ["lab", "plant"]},
	      "m2": {"Prefix": "gateway", "Sites": ["edge", "core"]}
	    }
	  },
	  "Conditions": {
	    "IsGateway": {"Fn::Equals": [{"Ref": "Model"}, "m2"]},
	    "IsSensor": {"Fn::Not": [{"Condition": "IsGateway"}]},
	    "SensorInEU": {"Fn::And": [{"Condition": "IsSensor"}, {"Fn::Equals": [{"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "Tags"}]}]}, "eu"]}]}
	  },
	  "Resources": {
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {
	      "ThingName": {"Fn::Join": ["-", [{"Fn::FindInMap": ["Models", {"Ref": "Model"}, "Prefix"]}, {"Ref": "Serial"}]]},
	      "AttributePayload": {"site": {"Fn::Select": ["1", {"Fn::FindInMap": ["Models", {"Ref": "Model"}, "Sites"]}]},
	        "zone": {"Fn::Select": [2, {"Fn::Split": [",", {"Ref": "Tags"}]}]},
	        "kind": {"Fn::If": ["IsGateway", "gateway", "sensor"]}}}},
	    "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
	      "Status": {"Fn::If": ["SensorInEU", "ACTIVE", "INACTIVE"]}}},
	    "gwpolicy": {"Type": "AWS::IoT::Policy", "Condition": "IsGateway", "Properties": {"PolicyName": "gw"}}
	  },
	  "DeviceConfiguration": {"region": {"Fn::Select": [1, {"Fn::Split": [",", {"Ref": "Tags"}]}]}}
	}`)
	doc, err := parseTemplate(body)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := evalTemplate(doc, map[string]string{"Serial": "9"}, "abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.ThingName != "sensor-9" || plan.ThingAttributes["site"] != "plant" || plan.ThingAttributes["zone"] != "7" ||
		plan.ThingAttributes["kind"] != "sensor" || plan.CertificateStatus != StatusActive || plan.DeviceConfiguration["region"] != "west" {
		t.Errorf("plan for m1: %+v", plan)
	}
	plan, err = evalTemplate(doc, map[string]string{"Serial": "9", "Model": "m2", "Tags": "us,east,1"}, "abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.ThingName != "gateway-9" || plan.ThingAttributes["kind"] != "gateway" || plan.CertificateStatus != StatusInactive {
		t.Errorf("plan for m2: %+v", plan)
	}
	// Errors a device's parameters can cause name what is wrong.
	for _, tc := range []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"Serial": "9", "Model": "m9"}, `mapping Models has no key "m9"`},
		{map[string]string{"Serial": "9", "Tags": "a,b"}, "index 2 is out of range (the list has 2 elements)"},
	} {
		_, err := evalTemplate(doc, tc.params, "abc", nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parameters %v: %v; want an error naming %s", tc.params, err, tc.want)
		}
	}
}

func TestSubjectFieldsAreForJITPOnly(t *testing.T) {
	body := json.RawMessage(`{
	  "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
	  "Resources": {
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
	    "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}
	  }
	}`)
	if _, err := parseTemplate(body); err == nil || !strings.Contains(err.Error(), "just-in-time") {
		t.Fatalf("fleet template using CommonName: %v", err)
	}
	doc, err := parseTemplateFor(body, jitpTemplate)
	if err != nil {
		t.Fatalf("JITP template using CommonName: %v", err)
	}
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "dev-77"}}
	plan, err := evalTemplateFor(doc, jitpTemplate, nil, "abc", cert)
	if err != nil || plan.ThingName != "dev-77" {
		t.Fatalf("JITP plan %+v, %v", plan, err)
	}
	// Evaluated as a fleet template, the subject is not there.
	if _, err := evalTemplateFor(doc, fleetTemplate, nil, "abc", cert); err == nil {
		t.Fatal("a fleet evaluation read the certificate's CommonName")
	}
}

func TestTemplateConditionCycleIsRefusedAtOnce(t *testing.T) {
	// Ten-way Fn::Or over a cycle: explored to a depth bound, this would take
	// 10^depth steps.
	or := `{"Fn::Or": [` + strings.Repeat(`{"Condition": "B"},`, 9) + `{"Condition": "B"}]}`
	body := json.RawMessage(`{"Conditions": {"A": ` + or + `, "B": ` + strings.ReplaceAll(or, `"B"`, `"A"`) + `},
	  "Resources": {"c": {"Type": "AWS::IoT::Certificate", "Condition": "A", "Properties": {}}}}`)
	doc, err := parseTemplate(body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evalTemplate(doc, nil, "abc", nil); err == nil || !strings.Contains(err.Error(), "refers to itself") {
		t.Fatalf("a cycle of conditions: %v", err)
	}
}
