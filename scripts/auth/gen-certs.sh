#!/usr/bin/env bash
# Generates the test PKI for the auth listeners into directory $1:
#   ca.pem / ca.key            test CA
#   server.pem / server.key    broker certificate for 127.0.0.1 and localhost (SAN), signed by the CA
#   badhost.pem / badhost.key  broker certificate signed by the CA that names another host only
#   client.pem                 client certificate signed by the CA; client-chain.pem = client + CA
#   client-key.pem             unencrypted PKCS#8 client key
#   client-key-pbes2.pem       the same key, PKCS#8 encrypted with PBES2 (AES-256-CBC, PBKDF2)
#   client-key-pbes1.pem       the same key, PKCS#8 encrypted with pbeWithSHA1And3-KeyTripleDES-CBC (the PKCS#12
#                              PBE that `openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES` writes)
#   client-key-des.pem         the same key, PKCS#8 encrypted with PKCS#5 PBES1 pbeWithSHA1AndDES-CBC (needs
#                              OpenSSL's legacy provider to read)
# The key password is read from $CLIENT_KEY_PASSWORD.
set -euo pipefail
dir=$1
: "${CLIENT_KEY_PASSWORD:?set CLIENT_KEY_PASSWORD}"
cd "$dir"
umask 077

# EC keys for the CA and brokers (generated in milliseconds); the client key is RSA, the common case for
# client certificates, so the encrypted PKCS#8 forms below wrap an RSA key.
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
rsa_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

ec_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=kafka-lambda-relay test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

# sign NAME SUBJECT EXTENSIONS KEYTYPE: a certificate for a new NAME.key signed by the CA.
sign() {
  "$4_key" "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
sign server "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth" ec
sign badhost "/CN=wrong-host.invalid" "subjectAltName=DNS:wrong-host.invalid
extendedKeyUsage=serverAuth" ec
sign client "/CN=relay-client" "extendedKeyUsage=clientAuth" rsa
cat client.pem ca.pem > client-chain.pem

openssl pkcs8 -topk8 -nocrypt -in client.key -out client-key.pem
openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -in client.key -passout env:CLIENT_KEY_PASSWORD \
  -out client-key-pbes2.pem
openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES -in client.key -passout env:CLIENT_KEY_PASSWORD -out client-key-pbes1.pem
openssl pkcs8 -topk8 -v1 PBE-SHA1-DES -provider legacy -provider default -in client.key \
  -passout env:CLIENT_KEY_PASSWORD -out client-key-des.pem
chmod 644 ./*.pem
