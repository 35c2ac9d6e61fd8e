// Package pkcs11bench measures what thingcert's PKCS#11 key adds to a
// signature: Sign through pkcs11store's Key against the bare crypto11 signer
// of the same key in the same SoftHSM2 token.
//
//	go test -run '^$' -bench . -count 5 ./bench/pkcs11/
//
// The "interleaved" benchmarks alternate the two signers call by call and
// report both times and their ratio, so a busy machine slows both alike.
package pkcs11bench
