// Package tpmstore keeps device keys in a TPM 2.0, through go-tpm's tpm2 API
// and no daemon.
//
// Keys are made inside the TPM under the TCG ECC P-256 storage root key (or a
// storage key persisted at 0x81000001), with the attributes
// sign|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth and a NULL
// scheme, so one RSA key signs both PKCS#1 v1.5 and PSS. A key is kept either
// as a TSS2 PRIVATE KEY file (tpm:blob=/abs/path.tpmkey, the format of
// tpm2-openssl and ssh-tpm-agent) or at a persistent handle
// (tpm:handle=0x81000010). The TPM is /dev/tpmrm0 unless a URI says
// ?device=/dev/tpm0 or ?device=tcp:HOST:PORT (swtpm).
//
// A key stays loaded from Open until its store is closed, so each Sign is one
// TPM command. Commands to one TPM take turns; TPM_RC_RETRY, TPM_RC_YIELDED
// and TPM_RC_TESTING are retried a bounded number of times. See docs/tpm.md.
package tpmstore
