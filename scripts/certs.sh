#!/usr/bin/env bash
# Makes a throwaway certificate authority and one certificate it signed, for the mutual TLS of
# the replication channel: DIR/ca.pem, DIR/node.pem and DIR/node.key. Primary and backup may
# share the node certificate: what each side checks is that the other holds one the CA signed.
# `certs.sh DIR NAME` makes NAME-ca.pem, NAME.pem and NAME.key instead (a second, unrelated CA:
# a stranger's). Idempotent: what exists is kept.
set -euo pipefail
dir=${1:?usage: certs.sh DIR [NAME]}
name=${2:-node}
ca=$dir/$([ "$name" = node ] && echo ca || echo "$name-ca")
mkdir -p "$dir"
[ -f "$dir/$name.pem" ] && exit 0
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$ca.key" -out "$ca.pem" -days 30 -subj "/CN=understudy $name CA" 2>/dev/null
openssl req "${ec[@]}" -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=understudy $name" 2>/dev/null
extensions=$(mktemp)
trap 'rm -f "$extensions" "$dir/$name.csr"' EXIT
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' > "$extensions"
openssl x509 -req -in "$dir/$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -out "$dir/$name.pem" -days 30 \
    -extfile "$extensions" 2>/dev/null
rm -f "$ca.srl"
