#!/usr/bin/env python3
"""Frames records the way real schema-registry producers do, for the schema registry tests.

Confluent framing comes from confluent-kafka's own serializers (AvroSerializer, JSONSerializer,
ProtobufSerializer) registering against the registry test double; Glue framing from AWS's
aws-glue-schema-registry serializer (Avro, JSON Schema) registering in moto_server's Glue. That library has
no Protobuf serializer, so Glue Protobuf records are framed with its codec.encode plus the message index the
Java SerDe library writes (MessageIndexFinder: a varint index into the file's message types sorted by full
name; demo.Order is the only one, index 0).

Reads a JSON request on stdin:
  {"registry": "confluent", "url": "http://127.0.0.1:PORT"}  or
  {"registry": "glue", "moto": "http://127.0.0.1:PORT", "registry_name": "..."}
  plus "topic" and "records": [{"format": "avro"|"json"|"protobuf"|"raw", "value": {...} | "<base64>",
                                 "key": "text" or null (framed as an Avro string when "key_avro": true)}]
and optionally "bootstrap": "127.0.0.1:PORT" to also produce them, in order, to partition 0 of "topic".
Prints {"records": [{"key": base64|null, "value": base64|null}], "registry_arn": ...}.
"""
import base64
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

AVRO_ORDER = json.dumps({
    "type": "record", "name": "Order", "namespace": "demo",
    "fields": [{"name": "id", "type": "long"}, {"name": "status", "type": "string"},
               {"name": "amount", "type": "double"}],
})
JSON_ORDER = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#", "title": "Order", "type": "object",
    "properties": {"id": {"type": "integer"}, "status": {"type": "string", "enum": ["NEW", "PAID", "SHIPPED"]},
                   "amount": {"type": "number"}},
    "required": ["id", "status", "amount"],
})
PROTO_ORDER = """syntax = "proto3";
package demo;

message Order {
  int64 id = 1;
  string status = 2;
  double amount = 3;
}
"""


def order_class():
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="demo/order.proto", package="demo", syntax="proto3")
    message = file.message_type.add(name="Order")
    for name, number, kind in [("id", 1, F.TYPE_INT64), ("status", 2, F.TYPE_STRING), ("amount", 3, F.TYPE_DOUBLE)]:
        message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL, json_name=name)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("demo.Order"))


def confluent(request):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": request["url"]})
    order = order_class()
    serializers = {
        "avro": AvroSerializer(client, AVRO_ORDER),
        "json": JSONSerializer(JSON_ORDER, client),
        "protobuf": ProtobufSerializer(order, client, {"use.deprecated.format": False}),
    }
    key_serializer = AvroSerializer(client, '"string"')
    topic = request["topic"]

    def value(record):
        if record["format"] == "protobuf":
            return serializers["protobuf"](order(**record["value"]), SerializationContext(topic, MessageField.VALUE))
        return serializers[record["format"]](record["value"], SerializationContext(topic, MessageField.VALUE))

    def key(record):
        return key_serializer(record["key"], SerializationContext(topic, MessageField.KEY))

    return value, key, None


def glue(request):
    import boto3
    from aws_schema_registry import DataAndSchema, SchemaRegistryClient
    from aws_schema_registry.avro import AvroSchema
    from aws_schema_registry.codec import encode
    from aws_schema_registry.jsonschema import JsonSchema
    from aws_schema_registry.serde import KafkaSerializer

    client = boto3.client("glue", endpoint_url=request["moto"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    name = request["registry_name"]
    try:
        arn = client.create_registry(RegistryName=name)["RegistryArn"]
    except client.exceptions.AlreadyExistsException:
        arn = client.get_registry(RegistryId={"RegistryName": name})["RegistryArn"]
    registry = SchemaRegistryClient(client, registry_name=name, wait_interval_seconds=0.1)
    values = KafkaSerializer(registry)
    keys = KafkaSerializer(registry, is_key=True)
    topic = request["topic"]
    schemas = {"avro": AvroSchema(AVRO_ORDER), "json": JsonSchema(JSON_ORDER)}
    proto_version = {}
    order = order_class()

    def value(record):
        if record["format"] == "protobuf":
            if not proto_version:
                created = client.create_schema(RegistryId={"RegistryName": name}, SchemaName=f"{topic}-proto",
                                               DataFormat="PROTOBUF", Compatibility="NONE",
                                               SchemaDefinition=PROTO_ORDER)
                proto_version["id"] = created["SchemaVersionId"]
            from uuid import UUID
            return encode(b"\x00" + order(**record["value"]).SerializeToString(), UUID(proto_version["id"]))
        return values.serialize(topic, DataAndSchema(record["value"], schemas[record["format"]]))

    def key(record):
        return keys.serialize(topic, DataAndSchema(record["key"], AvroSchema('"string"')))

    return value, key, arn


def main():
    request = json.load(sys.stdin)
    value_of, key_of, arn = (confluent if request["registry"] == "confluent" else glue)(request)
    out = []
    for record in request["records"]:
        if record["format"] == "raw":
            value = base64.b64decode(record["value"])
        else:
            value = value_of(record)
        key = None
        if record.get("key") is not None:
            key = key_of(record) if record.get("key_avro") else record["key"].encode()
        out.append((key, value))
    if request.get("bootstrap"):
        from confluent_kafka import Producer
        producer = Producer({"bootstrap.servers": request["bootstrap"], "enable.idempotence": False, "acks": "all"})
        for key, value in out:
            producer.produce(request["topic"], key=key, value=value, partition=0)
            producer.flush(30)
        if producer.flush(30) != 0:
            sys.exit("records were not all delivered to the broker")
    b64 = lambda b: None if b is None else base64.b64encode(b).decode()
    json.dump({"registry_arn": arn, "records": [{"key": b64(k), "value": b64(v)} for k, v in out]}, sys.stdout)


main()
