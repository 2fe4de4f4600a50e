#!/usr/bin/env bash
# Makes the test PKI of tests/integration/security_test.py (checked in: these keys protect nothing). Valid for
# 100 years. Run from anywhere; writes next to this script.
#   ca.pem / ca.key             the test CA
#   server.pem / server.key     CN localhost, SAN localhost + 127.0.0.1, serverAuth + clientAuth (the
#                               coordinator's public and control certificate; serve's local workers present it)
#   worker.pem / worker.key     CN tessera-worker, clientAuth: a remote worker's certificate
#   rogue-ca.pem, rogue.pem / rogue.key   another CA and a client certificate it signed: must be refused
#   other-server.pem / .key     CN localhost signed by the rogue CA: the certificate a reload test swaps in
set -euo pipefail
cd "$(dirname "$0")"
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # ca NAME CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days $days -subj "/CN=$2" -out "$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {  # leaf NAME CN CA EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -sha256 -days $days \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
server_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
ca ca "Tessera test CA"
leaf server localhost ca "$server_ext"
leaf worker tessera-worker ca "$client_ext"
ca rogue-ca "Rogue CA"
leaf rogue tessera-worker rogue-ca "$client_ext"
leaf other-server localhost rogue-ca "$server_ext"
rm -f ./*.srl rogue-ca.key ca.key  # no CA key is kept: rerun the script to change anything
echo "made $(ls ./*.pem | wc -l) certificates in $PWD"
