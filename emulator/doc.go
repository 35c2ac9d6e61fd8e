// Package emulator is a local stand-in for the device-facing side of AWS IoT
// Core, for tests, demos and device makers' own CI: MQTT over mutual TLS
// against a registry of certificates, accounts chosen by SNI, the
// fleet-provisioning and Jobs MQTT APIs, and AWS IoT's certificate rules.
//
// Start runs one, in memory or on a state folder, much as httptest.NewServer
// runs an HTTP server:
//
//	emu, err := emulator.Start(ctx, emulator.Config{
//		Accounts:  []emulator.Account{{Name: "dev"}},
//		Templates: []emulator.Template{{Name: "fleet", Body: emulator.SimpleTemplate("sensor-", "SerialNumber")}},
//		Now:       clock.Now, // optional: expire certificates and tokens without waiting
//	})
//	defer emu.Close()
//	emu.RegisterCA(ctx, "dev", caPEM, emulator.CAOptions{})
//	tlsConf := emu.ClientTLS("dev") // trusts emu.RootCAPEM(), sends the account's endpoint as SNI
//
// The connection rules, each refusal logged and kept in the history with its
// Rule, certificate ID and SNI:
//
//   - the SNI host name (<prefix>-ats.iot.<region>.amazonaws.com) chooses the
//     account; without it, or with one that names no endpoint, a certificate is
//     accepted only where it is registered in exactly one account under a
//     DEFAULT-mode CA (AWS-issued certificates count as such);
//   - the certificate must be registered in that account, ACTIVE, within its
//     validity by Config.Now, chained to its registered, ACTIVE CA (unless it was
//     registered without one), and of an algorithm AWS IoT accepts
//     (keystore.CheckCertificate); an RSA-PSS key only on TLS 1.3;
//   - on the port-443-style listener the client must offer ALPN x-amzn-mqtt-ca;
//   - at CONNECT, a certificate attached to things may use only their names as
//     client ID; a second connection with a client ID takes it over; a client ID
//     may CONNECT once per second.
//
// Devices may use ordinary topics, their own $aws/things/<client ID>/...
// topics and the fleet-provisioning API, whose replies (like those of the Jobs
// API) go only to the connection that asked.
//
// The Registry (embedded in Emulator) is the admin API: accounts, CAs,
// certificates and their status, things, templates, jobs and their
// executions, and the connection history. OpenAdmin reaches the same API on a
// state folder whether its emulator runs (through the admin socket) or not.
//
// With Config.APIListen the emulator also serves AWS IoT's control-plane API
// (REST-JSON over HTTPS, SigV4-verified against per-account access keys), so
// the aws CLI and the AWS SDKs drive it as they drive AWS: Emulator.APIURL is
// the endpoint and Emulator.AccessKey an account's credentials. api_routes.go
// lists the operations and says how to add one.
package emulator
