"""moto's server with DynamoDB writes made atomic, as DynamoDB's are.

moto serves each request on its own thread and applies a DynamoDB write as
read-modify-write without a lock. Concurrent conditional writes on one
item can then both pass their condition and one update is lost: 400
transactional decrements of a counter from 8 threads ended at 5, not 0.
The export's exactly-once accounting (a part's completion counts its job
down in one transaction) relies on DynamoDB's atomicity, so on plain moto
a job could wait forever for a part that had finished.

This launcher serializes moto's DynamoDB write operations under one lock
and then runs moto's own server, with the same command line:

    python scripts/moto_server.py -H 127.0.0.1 -p 5000
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend

_WRITES = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _WRITES:
            return method(*args, **kwargs)

    return locked


for _name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(DynamoDBBackend, _name, _atomic(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
