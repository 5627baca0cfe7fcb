#!/bin/sh
# Makes the DEVELOPMENT-ONLY certificates in this folder: a throwaway CA (dev-ca.crt, to
# trust in clients) and a leaf for localhost/127.0.0.1/::1 signed by it (dev.crt, dev.key).
set -eu
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=wsgate DEV-ONLY CA (DO NOT TRUST IN PRODUCTION)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  -keyout dev-ca.key -out dev-ca.crt 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=localhost (wsgate DEV-ONLY certificate)" -keyout dev.key -out dev.csr 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n' > dev.ext
openssl x509 -req -in dev.csr -CA dev-ca.crt -CAkey dev-ca.key -CAcreateserial -days 3650 \
  -extfile dev.ext -out dev.crt 2>/dev/null
rm -f dev.csr dev.ext dev-ca.srl dev-ca.key
echo "made dev-ca.crt, dev.crt, dev.key (development only)"
