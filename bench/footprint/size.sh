#!/usr/bin/env bash
# size.sh: stripped binary sizes of thingcert, of thingcert-emulator (which
# `thingcert emulator` and `thingcert demo` run), of the SDK's smallest program
# (examples/connect: one device, file key) and of a bare paho client
# (bench/footprint/barepaho), built the same way: CGO_ENABLED=0, -trimpath,
# -ldflags "-s -w", for linux/amd64, linux/arm64 and linux/arm GOARM=6 (the
# Raspberry Pi Zero/1). Without cgo thingcert has no PKCS#11 backend; TPM and
# file keys are in.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-14s %12s %12s %12s %12s %8s\n' target thingcert emulator connect barepaho connect/paho
for target in amd64 arm64 arm6; do
  case $target in
    arm6) env=(GOOS=linux GOARCH=arm GOARM=6) ;;
    *) env=(GOOS=linux GOARCH=$target) ;;
  esac
  for prog in thingcert emulator connect barepaho; do
    case $prog in
      thingcert) pkg=./cmd/thingcert ;;
      emulator) pkg=./cmd/thingcert-emulator ;;
      connect) pkg=./examples/connect ;;
      barepaho) pkg=./bench/footprint/barepaho ;;
    esac
    env "${env[@]}" CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/$prog-$target" $pkg
  done
  a=$(stat -c %s "$out/thingcert-$target"); e=$(stat -c %s "$out/emulator-$target")
  c=$(stat -c %s "$out/connect-$target"); b=$(stat -c %s "$out/barepaho-$target")
  awk -v t="linux/$target" -v a="$a" -v e="$e" -v c="$c" -v b="$b" 'BEGIN { printf "%-14s %10.1f MB %10.1f MB %10.1f MB %10.1f MB %8.2f\n", t, a/1e6, e/1e6, c/1e6, b/1e6, c/b }'
done
