"""LocalStack's runtime, on 127.0.0.1 only, with S3's multipart minimum
lowered on request.

S3 refuses a multipart upload whose parts but the last are under 5 MiB,
and LocalStack, like S3, checks it with a fixed constant. The service keeps
that minimum (BULK_EXPORT_PART_SIZE_MIB is at least 5), but its tests cut
files into chunks of a few KiB to exercise many parts and checkpoints with
little data. With S3_UPLOAD_PART_MIN_SIZE set (the variable moto reads for
the same purpose) the minimum is that many bytes:

    S3_UPLOAD_PART_MIN_SIZE=1 python scripts/emulators/localstack_server.py
"""

import os
import runpy

from twisted.internet import endpoints

# LocalStack 2026.3.0 binds its gateway's IPv4 port on every interface,
# whatever host GATEWAY_LISTEN names (runtime/server/twisted.py: "TODO:
# interface = host?"). Ours listens on 127.0.0.1 only.
_tcp4_server = endpoints.TCP4ServerEndpoint


def _loopback_tcp4_server(reactor, port, backlog=50, interface="127.0.0.1"):
    return _tcp4_server(reactor, port, backlog, interface)


endpoints.TCP4ServerEndpoint = _loopback_tcp4_server

if os.environ.get("S3_UPLOAD_PART_MIN_SIZE"):
    from localstack.services.s3 import models

    models.S3_UPLOAD_PART_MIN_SIZE = int(os.environ["S3_UPLOAD_PART_MIN_SIZE"])

runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
