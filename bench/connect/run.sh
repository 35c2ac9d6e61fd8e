#!/usr/bin/env bash
# run.sh [RUNS]: whole-process connect + QoS 1 publish, `thingcert connect
# --publish` against `mosquitto_pub` (the C client, OpenSSL), alternating, RUNS
# times each (default 30), against one mosquitto started here on a free
# loopback port (set_tcp_nodelay true), with the same ECDSA P-256 device key
# and certificate, TLS 1.3. Prints the medians and the median of the per-pair
# ratios thingcert/mosquitto_pub.
#
# Then the same with the key in SoftHSM2 when thingcert has its PKCS#11
# backend and OpenSSL has the pkcs11 engine (libengine-pkcs11-openssl) for
# mosquitto_pub; otherwise it says which is missing.
#
# THINGCERT=PATH times that binary instead of building one.
# BENCH_PERF=1 adds `perf stat` CPU times of each command; BENCH_TIMES_DIR=DIR
# keeps the raw per-run times.
#
# Needs: go, mosquitto, mosquitto_pub, openssl (and softhsm2-util, pkcs11-tool
# for the SoftHSM part). Run as root or as a user mosquitto can start as.
set -euo pipefail
runs=${1:-30}
cd "$(dirname "$0")/../.."
for p in go mosquitto mosquitto_pub openssl; do
  command -v $p >/dev/null || { echo "run.sh: $p is not installed" >&2; exit 1; }
done

work=$(mktemp -d /tmp/thingcert-bench-connect.XXXXXX)
chmod 0755 "$work"   # mosquitto drops to user mosquitto when started as root
mqpid=""
cleanup() { [ -n "$mqpid" ] && kill "$mqpid" 2>/dev/null && wait "$mqpid" 2>/dev/null; [ -n "${BENCH_TIMES_DIR:-}" ] && cp "$work"/*.times "$BENCH_TIMES_DIR"/ 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A release-like build: stripped, as a device would ship it.
if [ -n "${THINGCERT:-}" ]; then
  tc=$(realpath "$THINGCERT")
else
  go build -trimpath -ldflags "-s -w" -o "$work/thingcert" ./cmd/thingcert
  tc="$work/thingcert"
fi
endpoint=abc123-ats.iot.eu-west-1.amazonaws.com

# PKI: a root, a server certificate for the endpoint name and 127.0.0.1 (so
# mosquitto_pub, which checks the host it dials, verifies it too).
o() { openssl "$@" 2>/dev/null; }
o req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" \
  -out "$work/ca.pem" -subj "/CN=bench root" -days 2
o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/server.key" \
  -out "$work/server.csr" -subj "/CN=$endpoint"
printf 'subjectAltName=DNS:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$endpoint" >"$work/server.ext"
o x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -out "$work/server.pem" -days 2 -extfile "$work/server.ext"
printf 'extendedKeyUsage=clientAuth\n' >"$work/client.ext"
chmod 0644 "$work"/*.pem "$work/server.key"

# The device key: a PKCS#8 PEM, 0600 in a 0700 folder, made by thingcert;
# mosquitto_pub reads the very same file.
mkdir -m 0700 "$work/keys"
keyuri="file:$work/keys/device.pem"
"$tc" key generate --key "$keyuri" >/dev/null
"$tc" csr --key "$keyuri" --subject "CN=bench-device" --out "$work/device.csr" 2>/dev/null
o x509 -req -in "$work/device.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -out "$work/device.pem" -days 2 -extfile "$work/client.ext"

# mosquitto on a free loopback port.
for _ in $(seq 50); do
  port=$((20000 + RANDOM % 30000))
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null || break
done
cat >"$work/mosquitto.conf" <<CONF
per_listener_settings false
persistence false
set_tcp_nodelay true
log_dest none
listener $port 127.0.0.1
cafile $work/ca.pem
certfile $work/server.pem
keyfile $work/server.key
require_certificate true
use_identity_as_username true
CONF
chmod 0644 "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" &
mqpid=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

# bench NAME THINGCERT_KEY_URI MOSQUITTO_PUB_KEY_ARGS...
bench() {
  local name=$1 uri=$2; shift 2
  local tcmd=("$tc" connect --endpoint "$endpoint" --address "127.0.0.1:$port" --ca "$work/ca.pem"
    --key "$uri" --cert "$work/device.pem" --publish bench/t --message hello)
  local mcmd=(mosquitto_pub --cafile "$work/ca.pem" --cert "$work/device.pem" "$@"
    -h 127.0.0.1 -p "$port" -i bench-device -t bench/t -m hello -q 1 --tls-version tlsv1.3)
  # Both must work before they are timed.
  "${tcmd[@]}" >"$work/tc.out" || { echo "thingcert connect failed" >&2; exit 1; }
  grep -q "TLS 1.3" "$work/tc.out" || { echo "thingcert did not negotiate TLS 1.3" >&2; exit 1; }
  "${mcmd[@]}" || { echo "mosquitto_pub failed" >&2; exit 1; }
  for _ in 1 2 3; do "${tcmd[@]}" >/dev/null; "${mcmd[@]}"; done   # warm the page cache
  if [ -n "${BENCH_PERF:-}" ]; then   # CPU time of each, for looking into a ratio
    perf stat -r "$runs" "${tcmd[@]}" 2>&1 >/dev/null | grep -E "task-clock|elapsed" | sed "s/^/$name thingcert: /"
    perf stat -r "$runs" "${mcmd[@]}" 2>&1 >/dev/null | grep -E "task-clock|elapsed" | sed "s/^/$name mosquitto_pub: /"
  fi
  local out="$work/$name.times" i t0 t1 t2
  : >"$out"
  for ((i = 0; i < runs; i++)); do
    # Alternate which goes first so neither always runs on a warmer machine.
    if ((i % 2 == 0)); then
      t0=$EPOCHREALTIME; "${tcmd[@]}" >/dev/null; t1=$EPOCHREALTIME; "${mcmd[@]}"; t2=$EPOCHREALTIME
      echo "$t0 $t1 $t2" | awk '{printf "%.3f %.3f\n", ($2-$1)*1000, ($3-$2)*1000}' >>"$out"
    else
      t0=$EPOCHREALTIME; "${mcmd[@]}"; t1=$EPOCHREALTIME; "${tcmd[@]}" >/dev/null; t2=$EPOCHREALTIME
      echo "$t0 $t1 $t2" | awk '{printf "%.3f %.3f\n", ($3-$2)*1000, ($2-$1)*1000}' >>"$out"
    fi
  done
  awk -v name="$name" -v runs="$runs" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n++; tc[n] = $1; mq[n] = $2; r[n] = $1 / $2 }
    END {
      mt = median(tc, n); mm = median(mq, n); mr = median(r, n)
      printf "%-22s %6d %14.2f %18.2f %12.3f\n", name, runs, mt, mm, mr
    }' "$out"
}

printf '%-22s %6s %14s %18s %12s\n' key runs "thingcert ms" "mosquitto_pub ms" "median ratio"
bench file-ecdsa-p256 "$keyuri" --key "$work/keys/device.pem"

# SoftHSM2: the same comparison with the key in a PKCS#11 token.
module=/usr/lib/softhsm/libsofthsm2.so
engine=$(ls /usr/lib/*/engines-3/pkcs11.so 2>/dev/null | head -1 || true)
why=""
command -v softhsm2-util >/dev/null && [ -e "$module" ] || why="SoftHSM2 is not installed (apt-get install softhsm2)"
[ -z "$why" ] && [ -z "$engine" ] && why="mosquitto_pub needs OpenSSL's pkcs11 engine (apt-get install libengine-pkcs11-openssl)"
if [ -z "$why" ]; then
  export SOFTHSM2_CONF="$work/softhsm2.conf"
  mkdir -m 0700 "$work/tokens"
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$work" >"$SOFTHSM2_CONF"
  softhsm2-util --init-token --free --label bench --so-pin 5678 --pin 1234 >/dev/null
  printf '1234' >"$work/pin"; chmod 0600 "$work/pin"
  p11uri="pkcs11:token=bench;object=device?module-path=$module&pin-source=file:$work/pin"
  if ! "$tc" key generate --key "$p11uri" >/dev/null 2>"$work/p11.err"; then
    why="this thingcert has no working PKCS#11 backend: $(tr '\n' ' ' <"$work/p11.err")"
  fi
fi
if [ -z "$why" ]; then
  "$tc" csr --key "$p11uri" --subject "CN=bench-device" --out "$work/device-p11.csr" 2>/dev/null
  o x509 -req -in "$work/device-p11.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -out "$work/device.pem" -days 2 -extfile "$work/client.ext"
  # libp11's engine takes the module from PKCS11_MODULE_PATH and the PIN from
  # the URI. mosquitto_pub 2.0 checks that --key names a readable file before
  # it learns the key is an engine's, so a file by the URI's name must exist.
  export PKCS11_MODULE_PATH=$module
  engkey="pkcs11:token=bench;object=device;type=private?pin-value=1234"
  cd "$work" && : >"$engkey"
  bench softhsm-ecdsa-p256 "$p11uri" --keyform engine --tls-engine pkcs11 --key "$engkey"
else
  echo "softhsm-ecdsa-p256: skipped: $why"
fi
