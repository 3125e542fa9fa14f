"""moto's S3 server, with buckets made before it accepts a connection (``--bucket``, repeated).

moto keeps its buckets in memory, so a restarted server starts empty; a fault test that restarts it
names the buckets a persistent store would have kept, and no client can find them missing between
the server's start and their creation.

    python -m kpcap_localcluster.s3_server -H HOST -p PORT --bucket NAME ...
"""

from __future__ import annotations

import argparse

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main as serve

from kpcap_localcluster.storage import TEST_REGION


def main() -> None:
    parser = argparse.ArgumentParser(prog="kpcap_localcluster.s3_server")
    parser.add_argument("-H", "--host", required=True)
    parser.add_argument("-p", "--port", required=True)
    parser.add_argument("--bucket", action="append", default=[])
    args = parser.parse_args()
    for bucket in args.bucket:
        s3_backends[DEFAULT_ACCOUNT_ID]["global"].create_bucket(bucket, TEST_REGION)
    serve(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main()
