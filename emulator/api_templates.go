package emulator

import (
	"context"
	"encoding/json"
	"fmt"
)

// Fleet-provisioning templates through the control plane. The body is kept as
// the JSON text AWS takes (templateBody is a string holding JSON).

// template finds an account's provisioning template by name.
func (r *Registry) template(ctx context.Context, account, name string) (Template, error) {
	ts, err := r.Templates(ctx, account)
	if err != nil {
		return Template{}, err
	}
	for _, t := range ts {
		if t.Name == name {
			return t, nil
		}
	}
	return Template{}, fmt.Errorf("emulator: provisioning template %q in account %s: %w", name, account, ErrNotFound)
}

// templateVersion is every template's defaultVersionId: the emulator keeps
// one version of each.
const templateVersion = 1

func apiCreateProvisioningTemplate(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		TemplateName        string `json:"templateName"`
		Description         string `json:"description"`
		TemplateBody        string `json:"templateBody"`
		Enabled             bool   `json:"enabled"`
		ProvisioningRoleArn string `json:"provisioningRoleArn"`
		Type                string `json:"type"`
		PreProvisioningHook any    `json:"preProvisioningHook"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	switch {
	case in.TemplateName == "":
		return nil, invalidRequest("templateName is required")
	case in.TemplateBody == "":
		return nil, invalidRequest("templateBody is required")
	case in.ProvisioningRoleArn == "":
		return nil, invalidRequest("provisioningRoleArn is required (the emulator assumes no role, but AWS requires one)")
	case len(in.TemplateBody) > 10240:
		return nil, invalidRequest("templateBody is %d characters: AWS takes at most 10240", len(in.TemplateBody))
	case len(in.Description) > 500:
		return nil, invalidRequest("description is %d characters: AWS takes at most 500", len(in.Description))
	case in.PreProvisioningHook != nil:
		return nil, invalidRequest("preProvisioningHook: the emulator runs no Lambda functions")
	}
	switch in.Type {
	case "":
		in.Type = "FLEET_PROVISIONING"
	case "FLEET_PROVISIONING":
	case "JITP":
		return nil, invalidRequest("type JITP: the emulator does just-in-time provisioning of no kind; use FLEET_PROVISIONING")
	default:
		return nil, invalidRequest("type %q: use FLEET_PROVISIONING", in.Type)
	}
	if !json.Valid([]byte(in.TemplateBody)) {
		return nil, invalidRequest("templateBody is not JSON")
	}
	t := Template{
		Name: in.TemplateName, Body: json.RawMessage(in.TemplateBody), Disabled: !in.Enabled,
		Description: in.Description, RoleARN: in.ProvisioningRoleArn, Type: in.Type,
	}
	if err := c.Emu.CreateTemplate(ctx, c.Account, t); err != nil {
		return nil, err
	}
	return map[string]any{"templateArn": c.ARN("provisioningtemplate/" + t.Name), "templateName": t.Name, "defaultVersionId": templateVersion}, nil
}

func apiDescribeProvisioningTemplate(ctx context.Context, c *apiCall) (any, error) {
	t, err := c.Emu.template(ctx, c.Account, c.Path("templateName"))
	if err != nil {
		return nil, err
	}
	out := map[string]any{
		"templateArn":      c.ARN("provisioningtemplate/" + t.Name),
		"templateName":     t.Name,
		"templateBody":     string(t.Body),
		"enabled":          !t.Disabled,
		"defaultVersionId": templateVersion,
		"type":             templateType(t),
		"creationDate":     epoch(t.CreatedAt),
		"lastModifiedDate": epoch(t.CreatedAt),
	}
	if t.Description != "" {
		out["description"] = t.Description
	}
	if t.RoleARN != "" {
		out["provisioningRoleArn"] = t.RoleARN
	}
	return out, nil
}

// templateType is a template's type; those made by the admin API are fleet
// provisioning ones.
func templateType(t Template) string {
	if t.Type == "" {
		return "FLEET_PROVISIONING"
	}
	return t.Type
}

func apiListProvisioningTemplates(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("maxResults", 1, 250, 25)
	if err != nil {
		return nil, err
	}
	ts, err := c.Emu.Templates(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	page, next, err := pageOf(ts, func(t Template) string { return t.Name }, c.Query("nextToken"), size)
	if err != nil {
		return nil, err
	}
	type summary struct {
		TemplateArn      string `json:"templateArn"`
		TemplateName     string `json:"templateName"`
		Description      string `json:"description,omitempty"`
		CreationDate     epoch  `json:"creationDate"`
		LastModifiedDate epoch  `json:"lastModifiedDate"`
		Enabled          bool   `json:"enabled"`
		Type             string `json:"type"`
	}
	out := struct {
		Templates []summary `json:"templates"`
		NextToken string    `json:"nextToken,omitempty"`
	}{Templates: make([]summary, 0, len(page)), NextToken: next}
	for _, t := range page {
		out.Templates = append(out.Templates, summary{c.ARN("provisioningtemplate/" + t.Name), t.Name, t.Description, epoch(t.CreatedAt), epoch(t.CreatedAt), !t.Disabled, templateType(t)})
	}
	return out, nil
}
