#!/usr/bin/env python3
"""A TEST DOUBLE of a Confluent-compatible schema registry (not a registry): the REST endpoints the relay
and confluent-kafka's serializers call, served from a directory, on 127.0.0.1 only.

No Confluent-compatible registry server installs from the package registries reachable here, so the tests
use this. It implements only what Confluent's API reference documents for these calls:

  POST /subjects/{subject}/versions        register a schema (or find it) -> {"id": N}
  POST /subjects/{subject}                 look a schema up under a subject -> {"subject", "id", "version", "schema"}
  GET  /schemas/ids/{id}                   -> {"schema": "...", "schemaType": "..."} (schemaType omitted for AVRO)
  GET  /subjects/{subject}/versions/{v}    v a number or "latest" -> {"subject", "id", "version", "schema", ...}

Errors use Confluent's shape {"error_code": 40403, "message": "..."} with HTTP 404.

State lives in DIR: DIR/schemas/<id>.json and DIR/subjects/<subject>.json (a list of ids, one per version).
Test hooks, also files in DIR: `down` (every request answers 503, a registry outage), `basic-auth`
("user:password": requests without these credentials get 401), `requests.log` (one line per request:
method, path, status).

Usage: registry_double.py DIR PORT_FILE [CERT KEY [CLIENT_CA]]
  binds 127.0.0.1:0 and writes the chosen port to PORT_FILE; with CERT and KEY it serves HTTPS, and with
  CLIENT_CA it requires a client certificate signed by that CA (mutual TLS).
"""
import base64
import json
import os
import re
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = sys.argv[1]
LOCK = threading.Lock()


def path(*parts):
    return os.path.join(ROOT, *parts)


def read_json(file, default):
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_json(file, value):
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, file)


def schema_body(schema_id):
    stored = read_json(path("schemas", f"{schema_id}.json"), None)
    if stored is None:
        return None
    body = {"schema": stored["schema"]}
    if stored.get("schemaType", "AVRO") != "AVRO":
        body["schemaType"] = stored["schemaType"]
    if stored.get("references"):
        body["references"] = stored["references"]
    return body


def register(subject, request):
    """Returns the id of an identical schema if there is one, else stores a new one."""
    wanted = {"schema": request["schema"], "schemaType": request.get("schemaType", "AVRO"),
              "references": request.get("references", [])}
    os.makedirs(path("schemas"), exist_ok=True)
    ids = sorted(int(name[:-5]) for name in os.listdir(path("schemas")) if name.endswith(".json"))
    found = next((i for i in ids if read_json(path("schemas", f"{i}.json"), None) == wanted), None)
    if found is None:
        found = (ids[-1] + 1) if ids else 1
        write_json(path("schemas", f"{found}.json"), wanted)
    versions = read_json(path("subjects", f"{subject}.json"), [])
    if found not in versions:
        versions.append(found)
        write_json(path("subjects", f"{subject}.json"), versions)
    return found, versions.index(found) + 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        # Logged before answering, so a client that has its answer finds the line.
        with open(path("requests.log"), "a") as log:
            log.write(f"{self.command} {self.path} {status}\n")
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refused(self):
        if os.path.exists(path("down")):
            self.answer(503, {"error_code": 50003, "message": "test double: registry is down"})
            return True
        expected = None
        if os.path.exists(path("basic-auth")):
            with open(path("basic-auth")) as f:
                expected = "Basic " + base64.b64encode(f.read().strip().encode()).decode()
        if expected is not None and self.headers.get("Authorization") != expected:
            self.answer(401, {"error_code": 401, "message": "Unauthorized"})
            return True
        return False

    def do_GET(self):
        if self.refused():
            return
        route = self.path.split("?")[0]
        with LOCK:
            if m := re.fullmatch(r"/schemas/ids/(\d+)", route):
                body = schema_body(int(m.group(1)))
                if body is None:
                    return self.answer(404, {"error_code": 40403, "message": f"Schema {m.group(1)} not found"})
                return self.answer(200, body)
            if m := re.fullmatch(r"/subjects/([^/]+)/versions/(latest|\d+)", route):
                versions = read_json(path("subjects", f"{m.group(1)}.json"), [])
                if not versions:
                    return self.answer(404, {"error_code": 40401, "message": f"Subject '{m.group(1)}' not found."})
                index = len(versions) if m.group(2) == "latest" else int(m.group(2))
                if not 1 <= index <= len(versions):
                    return self.answer(404, {"error_code": 40402, "message": "Version not found."})
                schema_id = versions[index - 1]
                body = dict(schema_body(schema_id), subject=m.group(1), id=schema_id, version=index)
                body.setdefault("schemaType", "AVRO")
                return self.answer(200, body)
        self.answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.refused():
            return
        route = self.path.split("?")[0]
        with LOCK:
            if m := re.fullmatch(r"/subjects/([^/]+)/versions", route):
                schema_id, version = register(m.group(1), request)
                return self.answer(200, {"id": schema_id})
            if m := re.fullmatch(r"/subjects/([^/]+)", route):
                schema_id, version = register(m.group(1), request)
                body = dict(schema_body(schema_id), subject=m.group(1), id=schema_id, version=version)
                return self.answer(200, body)
        self.answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 4:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    if len(sys.argv) > 5:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
