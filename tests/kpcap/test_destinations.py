"""destinationConf parsing and object naming."""

from __future__ import annotations

import pytest

from kpcap.destinations import (
    Destination,
    DestinationScheme,
    destination_uri,
    object_key,
    object_uri,
    parse_destination,
)
from kpcap.errors import SpecInvalid

CAPTURE = "4f3b1c2d00004aaa8bbb123456789abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket-a", Destination(scheme=DestinationScheme.S3, bucket="bucket-a")),
        ("s3://bucket-a/", Destination(scheme=DestinationScheme.S3, bucket="bucket-a")),
        (
            "s3://bucket-a/x/y/?region=us-east-1",
            Destination(scheme=DestinationScheme.S3, bucket="bucket-a", prefix="x/y", region="us-east-1"),
        ),
        (
            "s3://my.bucket.1/p?endpoint=http://127.0.0.1:9000/&region=auto",
            Destination(
                scheme=DestinationScheme.S3,
                bucket="my.bucket.1",
                prefix="p",
                region="auto",
                endpoint="http://127.0.0.1:9000",
            ),
        ),
        (
            "s3://bkt?endpoint=https%3A%2F%2FMinio.Example%3A8443",
            Destination(scheme=DestinationScheme.S3, bucket="bkt", endpoint="https://minio.example:8443"),
        ),
        (
            "s3://bkt?endpoint=http://[::1]:9000",
            Destination(scheme=DestinationScheme.S3, bucket="bkt", endpoint="http://[::1]:9000"),
        ),
        (
            "gs://bucket_a/dt=2025-05-01/(x)",
            Destination(scheme=DestinationScheme.GCS, bucket="bucket_a", prefix="dt=2025-05-01/(x)"),
        ),
        (
            "gs://" + ".".join(["a" * 63] * 3),
            Destination(scheme=DestinationScheme.GCS, bucket=".".join(["a" * 63] * 3)),
        ),
    ],
)
def test_valid_destinations_and_canonical_form(text: str, expected: Destination) -> None:
    parsed = parse_destination(text)
    assert parsed == expected
    assert parse_destination(destination_uri(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "must be 's3://"),
        ("", "must be 's3://"),
        ("bucket/prefix", "must be 's3://"),
        ("https://bucket-a/x", "must be 's3://"),
        ("S3://bucket-a", "must be 's3://"),
        ("s3://bucket-a/x y", "whitespace"),
        ("s3://ab", "S3 bucket name is 3 to 63"),
        ("s3://" + "a" * 64, "S3 bucket name"),
        ("s3://Bucket", "S3 bucket name"),
        ("s3://bucket_a", "S3 bucket name"),
        ("s3://a..b", "no '..'"),
        ("s3://-bucket", "S3 bucket name"),
        ("s3://192.168.1.1", "IP address"),
        ("s3://xn--bucket", "xn--"),
        ("s3://bucket-s3alias", "-s3alias"),
        ("s3://bucket-a:9000/x", "without ':port'"),
        ("gs://goog-bucket", "'goog'"),
        ("gs://my-g00gle-bucket", "google"),
        ("gs://" + "a" * 64, "GCS bucket name"),
        ("gs://" + "a" * 64 + ".b", "GCS bucket name"),
        ("gs://bucket-a?region=eu", "no query parameters"),
        ("gs://bucket-a?endpoint=http://x", "no query parameters"),
        ("s3://bucket-a//x", "no empty"),
        ("s3://bucket-a/../x", "'..'"),
        ("s3://bucket-a/a%2Fb", "prefix is"),
        ("s3://bucket-a/" + "x" * 800, "at most 727 bytes"),
        ("s3://bucket-a#frag", "fragment"),
        ("s3://bucket-a?colour=red", "unknown parameter 'colour'"),
        ("s3://bucket-a?region=a&region=b", "more than once"),
        ("s3://bucket-a?region=", "needs a value"),
        ("s3://bucket-a?region=US_EAST", "a region is"),
        ("s3://bucket-a?endpoint=ftp://x", "http:// or https://"),
        ("s3://bucket-a?endpoint=http://", "http:// or https://"),
        ("s3://bucket-a?endpoint=http://x:99999", "http:// or https://"),
        ("s3://bucket-a?endpoint=http://x/path", "no path"),
        ("s3://key:secret@bucket-a/x", "credentials are not accepted"),
        ("s3://bucket-a?endpoint=http://key:secret@minio:9000", "credentials are not accepted"),
        ("s3://bucket-a?aws_access_key_id=AKIA", "credentials are not accepted"),
        ("s3://bucket-a?X-Amz-Security-Token=t", "credentials are not accepted"),
        ("s3://bucket-a?secret=s", "Secret named in the chart"),
        ("gs://bucket-a?token=t", "standard chains"),
    ],
)
def test_invalid_destinations(text: object, fragment: str) -> None:
    with pytest.raises(SpecInvalid) as raised:
        parse_destination(text)
    assert raised.value.fields[0] == "spec.destinationConf"
    assert fragment in str(raised.value)


def test_field_name_is_configurable() -> None:
    with pytest.raises(SpecInvalid) as raised:
        parse_destination("ftp://x", field="destination_conf")
    assert raised.value.fields == ("destination_conf",)


def test_object_key_and_uri() -> None:
    with_prefix = parse_destination("s3://bucket-a/captures/team-a?region=us-east-1")
    assert object_key(with_prefix, capture_id=CAPTURE, node_name="node-1.zone-a") == (
        f"captures/team-a/pcap_{CAPTURE}/node-1.zone-a.pcap"
    )
    assert object_uri(with_prefix, capture_id=CAPTURE, node_name="node-1") == (
        f"s3://bucket-a/captures/team-a/pcap_{CAPTURE}/node-1.pcap"
    )
    bare = parse_destination("gs://bucket-a/")
    assert object_key(bare, capture_id=CAPTURE, node_name="n") == f"pcap_{CAPTURE}/n.pcap"
    assert object_uri(bare, capture_id=CAPTURE, node_name="n") == f"gs://bucket-a/pcap_{CAPTURE}/n.pcap"


@pytest.mark.parametrize("node_name", ["", "Node-1", "../etc", "a/b", "node_1", "-node", "a" * 254, "node\n"])
def test_object_key_rejects_bad_node_names(node_name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        object_key(parse_destination("s3://bucket-a"), capture_id=CAPTURE, node_name=node_name)


@pytest.mark.parametrize(
    "bad_id", ["", CAPTURE.upper(), CAPTURE[:-1], "4f3b1c2d-0000-4aaa-8bbb-123456789abc"]
)
def test_object_key_rejects_bad_capture_ids(bad_id: str) -> None:
    with pytest.raises(ValueError, match="capture_id"):
        object_key(parse_destination("s3://bucket-a"), capture_id=bad_id, node_name="n")
