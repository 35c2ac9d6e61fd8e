# `make test` installs the test peers when they are missing (as root, with
# apt-get) and runs every test against them. Peer-needing tests fail, not skip,
# under it: a green run means SoftHSM2 (and OpenSSL's pkcs11 engine, which
# bench/connect/run.sh gives mosquitto_pub), swtpm, tpm2-tools, mosquitto, openssl,
# systemd-analyze (which checks the shipped unit), dpkg and file (which check
# the release packages, installed on this machine: CI runs as root) were used.
SHELL := /bin/bash
GO ?= go
PEERS_PKGS := softhsm2 libengine-pkcs11-openssl opensc swtpm swtpm-tools tpm2-tools tpm2-openssl mosquitto mosquitto-clients openssl systemd awscli dpkg file chromium
PEERS_BINS := softhsm2-util pkcs11-tool swtpm swtpm_ioctl tpm2_readpublic mosquitto mosquitto_pub mosquitto_sub mosquitto_rr openssl systemd-analyze systemd-sysusers aws dpkg-deb file chromium
# Peers that are Go programs, built outside the project's go.mod into
# PEERS_GOBIN (internal/testpeers looks there): step-ca, the owner's CA server.
PEERS_GOBIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/thingcert-peers/bin
STEPCA_VERSION := v0.30.2
export THINGCERT_PEERS_BIN := $(PEERS_GOBIN)
TEST_TIMEOUT ?= 15m
# make fuzz runs every fuzz target for FUZZTIME, one after another (FUZZPKGS
# narrows the packages); crashers land in the package's testdata/fuzz.
FUZZTIME ?= 5m
FUZZPKGS ?= ./...

.PHONY: test peers vet build bench fuzz dist

test: peers vet
	THINGCERT_REQUIRE_PEERS=1 $(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	THINGCERT_REQUIRE_PEERS=1 $(GO) -C tools test -race ./...
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/thingcert

vet:
	$(GO) vet ./...
	$(GO) vet -tags thingcert_gendocs ./cmd/thingcert
	$(GO) -C tools vet ./...

peers:
	@missing=""; for b in $(PEERS_BINS); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	command -v openssl >/dev/null && [ -e "$$(openssl version -m | sed 's/.*"\(.*\)"/\1/')/tpm2.so" ] || missing="$$missing tpm2-openssl"; \
	command -v openssl >/dev/null && [ -e "$$(openssl version -e | sed 's/.*"\(.*\)"/\1/')/pkcs11.so" ] || missing="$$missing libengine-pkcs11-openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "test peers missing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PEERS_PKGS) >/dev/null; \
	  else \
	    echo "run as root: apt-get update && apt-get install -y $(PEERS_PKGS)"; exit 1; \
	  fi; \
	fi
	@# step-ca without cgo: a cgo build wants libpcsclite for its YubiKey support.
	@[ -x "$(PEERS_GOBIN)/step-ca" ] || { echo "installing step-ca $(STEPCA_VERSION) into $(PEERS_GOBIN)"; \
	  cd / && CGO_ENABLED=0 GOBIN="$(PEERS_GOBIN)" GOFLAGS=-mod=mod $(GO) install github.com/smallstep/certificates/cmd/step-ca@$(STEPCA_VERSION); }

# thingcert and, beside it, thingcert-emulator (which `thingcert emulator`
# and `thingcert demo` run).
build:
	$(GO) build -o ./ ./cmd/thingcert ./cmd/thingcert-emulator

# Release artifacts for every architecture into dist/ (docs/release.md).
# DIST_ARCH=amd64 builds one.
DIST_ARCH ?= amd64,arm64,armv7,armv6
dist:
	$(GO) -C tools run ./dist -repo $(CURDIR) -out $(CURDIR)/dist -arch $(DIST_ARCH)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bench/...

fuzz:
	@failed=""; for pkg in $$($(GO) list $(FUZZPKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$t for $(FUZZTIME)"; \
	    $(GO) test $$pkg -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) || failed="$$failed $$pkg.$$t"; \
	  done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets that failed:$$failed"; exit 1; fi; echo "every fuzz target ran $(FUZZTIME) without a failure"
