package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Alerts lists the alert rules (GET /v1/alerts).
func (c *Client) Alerts(ctx context.Context) (AlertsResult, error) {
	var r AlertsResult
	err := c.do(ctx, http.MethodGet, "/v1/alerts", nil, "", &r)
	return r, err
}

// AddAlert makes an alert rule (POST /v1/alerts).
func (c *Client) AddAlert(ctx context.Context, req AlertRequest) (AlertJSON, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return AlertJSON{}, fmt.Errorf("api: alert rule: %w", err)
	}
	var r AlertJSON
	err = c.do(ctx, http.MethodPost, "/v1/alerts", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// RemoveAlert deletes a rule (DELETE /v1/alerts/ID).
func (c *Client) RemoveAlert(ctx context.Context, id string) error {
	var r map[string]string
	return c.do(ctx, http.MethodDelete, "/v1/alerts/"+url.PathEscape(id), nil, "", &r)
}

// PauseAlert silences a rule until the given time (POST /v1/alerts/ID/pause).
func (c *Client) PauseAlert(ctx context.Context, id string, until time.Time) (AlertJSON, error) {
	body, _ := json.Marshal(map[string]time.Time{"until": until})
	var r AlertJSON
	err := c.do(ctx, http.MethodPost, "/v1/alerts/"+url.PathEscape(id)+"/pause", bytes.NewReader(body), "application/json", &r)
	return r, err
}

// TestAlert sends a test message of a rule now (POST /v1/alerts/ID/test).
func (c *Client) TestAlert(ctx context.Context, id string) (AlertTestResult, error) {
	var r AlertTestResult
	err := c.do(ctx, http.MethodPost, "/v1/alerts/"+url.PathEscape(id)+"/test", nil, "", &r)
	return r, err
}
