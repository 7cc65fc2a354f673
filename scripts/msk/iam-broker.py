"""A local stand-in for an MSK broker's IAM listener (port 9098), for the end-to-end tests.

It is a TLS-terminating Kafka-protocol proxy in front of a plaintext Kafka broker (tansu in the tests):

  client --TLS--> this proxy: ApiVersions  -> forwarded to the upstream broker
                              SaslHandshake -> answered here; only OAUTHBEARER is offered
                              SaslAuthenticate -> the OAUTHBEARER token is checked here as MSK checks it
                  after a successful authentication every byte is piped to and from the upstream broker
                  (which advertises this proxy's port, so clients come back here for every broker).

The token check is an independent SigV4 implementation (hashlib/hmac, not botocore and not the relay's
code): the token is base64url of a presigned GET https://kafka.<region>.amazonaws.com/?Action=
kafka-cluster%3AConnect&...; the proxy requires that region, Action, AWS4-HMAC-SHA256, SignedHeaders=host,
X-Amz-Expires<=900, the signing time not in the future (5 minutes of skew) and not expired, the expected
access key, and a signature that matches the expected secret key. A failure is answered with Kafka error 58
(SASL_AUTHENTICATION_FAILED) and a message, as MSK does, then the connection is closed. With
--deny-access-key the signature may be right but the principal "may not connect": MSK's "Access denied".

Every authentication appends one JSON line to --log: accepted, reason, access key, region, user agent and
the token's expiry. Never the token or the signature.

  python iam-broker.py --port P --upstream 127.0.0.1:T --cert server.pem --key server.key \
      --region us-east-1 --access-key AK --log auth.jsonl [--deny-access-key AK2]
  with the expected secret key in IAM_BROKER_SECRET_KEY.

Binds 127.0.0.1 only. Stops on SIGTERM.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
from urllib.parse import parse_qsl, quote, urlsplit

SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36

args = None
log_lock = threading.Lock()


def log(entry):
    with log_lock, open(args.log, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_frame(sock):
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, size)


def send_frame(sock, payload):
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def uvarint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def put_uvarint(value):
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def parse_header(frame, flexible):
    api_key, api_version, correlation = struct.unpack(">hhi", frame[:8])
    pos = 8
    (client_id_len,) = struct.unpack(">h", frame[pos : pos + 2])
    pos += 2 + max(client_id_len, 0)
    if flexible:
        count, pos = uvarint(frame, pos)
        for _ in range(count):
            _, pos = uvarint(frame, pos)
            size, pos = uvarint(frame, pos)
            pos += size
    return api_key, api_version, correlation, pos


def signing_key(secret, date, region, service):
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def check_token(token):
    """(accepted, reason, facts) for an MSK IAM token."""
    facts = {}
    try:
        url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except Exception:
        return False, "token is not base64url of a URL", facts
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(params)
    credential = query.get("X-Amz-Credential", "").split("/")
    facts = {
        "access_key": credential[0] if credential else None,
        "region": credential[2] if len(credential) > 2 else None,
        "user_agent": query.get("User-Agent"),
        "action": query.get("Action"),
    }
    expected_host = f"kafka.{args.region}.amazonaws.com"
    if parts.scheme != "https" or parts.netloc != expected_host or parts.path != "/":
        return False, f"token is not for https://{expected_host}/", facts
    if query.get("Action") != "kafka-cluster:Connect":
        return False, "Action is not kafka-cluster:Connect", facts
    if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or query.get("X-Amz-SignedHeaders") != "host":
        return False, "not a SigV4 presigned request signing host", facts
    if len(credential) != 5 or credential[2] != args.region or credential[3] != "kafka-cluster":
        return False, "credential scope is not <key>/<date>/<region>/kafka-cluster/aws4_request", facts
    try:
        signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        expires = int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        return False, "X-Amz-Date or X-Amz-Expires missing", facts
    now = datetime.datetime.now(datetime.timezone.utc)
    facts["expires_at"] = int((signed_at + datetime.timedelta(seconds=expires)).timestamp())
    if expires > 900:
        return False, "X-Amz-Expires above 900", facts
    if signed_at > now + datetime.timedelta(minutes=5):
        return False, "signed in the future", facts
    if signed_at + datetime.timedelta(seconds=expires) < now:
        return False, "token expired", facts
    if credential[0] not in (args.access_key, args.deny_access_key):
        return False, "unknown access key", facts
    signed = sorted((k, v) for k, v in params if k not in ("X-Amz-Signature", "User-Agent"))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in signed)
    canonical_request = "\n".join(
        ["GET", "/", canonical_query, f"host:{expected_host}", "", "host", hashlib.sha256(b"").hexdigest()]
    )
    scope = "/".join(credential[1:])
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", query["X-Amz-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = signing_key(args.secret_key, credential[1], credential[2], credential[3])
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
        return False, "signature does not match", facts
    if args.deny_access_key and credential[0] == args.deny_access_key:
        return False, "Access denied", facts
    return True, "ok", facts


def handshake_response(correlation, error):
    body = struct.pack(">h", error) + struct.pack(">i", 1) + struct.pack(">h", 11) + b"OAUTHBEARER"
    return struct.pack(">i", correlation) + body


def authenticate_response(correlation, version, error, message):
    if version >= 2:
        msg = b"\x00" if message is None else put_uvarint(len(message.encode()) + 1) + message.encode()
        body = struct.pack(">h", error) + msg + put_uvarint(1) + struct.pack(">q", 0) + b"\x00"
        return struct.pack(">i", correlation) + b"\x00" + body
    msg = struct.pack(">h", -1) if message is None else struct.pack(">h", len(message.encode())) + message.encode()
    body = struct.pack(">h", error) + msg + struct.pack(">i", 0)
    if version >= 1:
        body += struct.pack(">q", 0)
    return struct.pack(">i", correlation) + body


def pipe(source, target):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client):
    host, port = args.upstream.rsplit(":", 1)
    upstream = None
    try:
        client.do_handshake()
        upstream = socket.create_connection((host, int(port)))
        mechanism_ok = False
        while True:
            frame = read_frame(client)
            (api_key, version) = struct.unpack(">hh", frame[:4])
            if api_key == API_VERSIONS:
                send_frame(upstream, frame)
                send_frame(client, read_frame(upstream))
            elif api_key == SASL_HANDSHAKE:
                _, _, correlation, pos = parse_header(frame, False)
                (size,) = struct.unpack(">h", frame[pos : pos + 2])
                mechanism = frame[pos + 2 : pos + 2 + size].decode()
                mechanism_ok = mechanism == "OAUTHBEARER"
                send_frame(client, handshake_response(correlation, 0 if mechanism_ok else UNSUPPORTED_SASL_MECHANISM))
                if not mechanism_ok:
                    log({"event": "handshake", "accepted": False, "reason": f"mechanism {mechanism} not offered"})
                    return
            elif api_key == SASL_AUTHENTICATE and mechanism_ok:
                flexible = version >= 2
                _, _, correlation, pos = parse_header(frame, flexible)
                if flexible:
                    size, pos = uvarint(frame, pos)
                    size -= 1
                else:
                    (size,) = struct.unpack(">i", frame[pos : pos + 4])
                    pos += 4
                message = frame[pos : pos + size].decode(errors="replace")
                token = None
                for part in message.split("\x01"):
                    if part.startswith("auth=Bearer "):
                        token = part[len("auth=Bearer ") :].strip()
                if token is None:
                    accepted, reason, facts = False, "no OAUTHBEARER token in the client message", {}
                else:
                    accepted, reason, facts = check_token(token)
                log({"event": "authenticate", "accepted": accepted, "reason": reason, **facts})
                if not accepted:
                    text = "Access denied" if reason == "Access denied" else f"IAM authentication failed: {reason}"
                    send_frame(client, authenticate_response(correlation, version, SASL_AUTHENTICATION_FAILED, text))
                    return
                send_frame(client, authenticate_response(correlation, version, 0, None))
                break
            else:
                _, _, correlation, _ = parse_header(frame, False)
                log({"event": "refused", "accepted": False, "reason": f"api key {api_key} before authentication"})
                return
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)
        upstream = None
    except (EOFError, OSError, ssl.SSLError):
        pass
    finally:
        for sock in (client, upstream):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--deny-access-key")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    # The secret key comes from the environment, not the command line (visible to every process).
    args.secret_key = os.environ["IAM_BROKER_SECRET_KEY"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        raw, _ = listener.accept()
        try:
            client = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
