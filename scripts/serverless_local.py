"""The parts of scripts/serverless-local.sh that talk to LocalStack and to
`cargo lambda watch` (run with .venv's Python, which has boto3):

  provision PREFIX QUEUE_URL  what template.yaml creates and
                              `bulk-export-aws provision` does not: the
                              dead-letter queue and the work queue's
                              settings, an EventBridge bus, the signing-key
                              parameter. Prints `export` lines for a shell.
  warm BASE                   invokes every function once, so that each is
                              compiled and started before "ready".
  feed BASE QUEUE_URL         the triggers cargo lambda watch lacks, until
                              killed: the worker's SQS event source mapping,
                              the scheduler's rate(1 minute) rule and the
                              sweeper's rate(1 hour) rule.

AWS settings (endpoint, test credentials, region) come from the environment.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3


def say(*words):
    print(time.strftime("%H:%M:%S"), "[feeder]", *words, file=sys.stderr, flush=True)


def queue_arn(sqs, url):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]


def provision(prefix, queue_url):
    sqs, events, ssm = boto3.client("sqs"), boto3.client("events"), boto3.client("ssm")
    # WorkQueue and WorkDeadLetterQueue as in the template. The visibility
    # timeout matters here too: the feeder, like the event source mapping,
    # keeps a message hidden that long while the worker has it.
    dlq = sqs.create_queue(
        QueueName=f"{prefix}-work-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    redrive = {"deadLetterTargetArn": queue_arn(sqs, dlq), "maxReceiveCount": "8"}
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "VisibilityTimeout": "1800",
            "MessageRetentionPeriod": "345600",
            "RedrivePolicy": json.dumps(redrive),
        },
    )
    # The template publishes to an existing bus (EventBusName, "default");
    # here a bus of our own, with a rule that copies every bulk-export event
    # into a queue, so that the completion events can be read.
    bus = f"{prefix}-events"
    try:
        events.create_event_bus(Name=bus)
    except events.exceptions.ResourceAlreadyExistsException:
        pass
    inbox = sqs.create_queue(QueueName=f"{prefix}-events")["QueueUrl"]
    events.put_rule(
        Name=f"{prefix}-finished",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["bulk-export"]}),
    )
    events.put_targets(
        Rule=f"{prefix}-finished",
        EventBusName=bus,
        Targets=[{"Id": "inbox", "Arn": queue_arn(sqs, inbox)}],
    )
    # The token signing key (template: TokenSigningKeyParameter), made once
    # as the README's `openssl genpkey` makes it; read only with --auth.
    parameter = f"/{prefix}/token-signing-key"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    try:
        ssm.put_parameter(Name=parameter, Type="SecureString", Value=pem)
    except ssm.exceptions.ParameterAlreadyExists:
        pass
    print(f"export BULK_EXPORT_DEAD_LETTER_QUEUE_URL={dlq}")
    print(f"export BULK_EXPORT_EVENT_BUS={bus}")
    print(f"export BULK_EXPORT_EVENTS_QUEUE_URL={inbox}")
    print(f"export BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER={parameter}")


def post(url, payload, timeout=900):
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def invoke(base, function, payload):
    return post(f"{base}/2015-03-31/functions/{function}/invocations", payload)


def tick(at):
    """An EventBridge scheduled event, as a rate() rule sends it."""
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "000000000000",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        "region": "us-east-1", "resources": [], "detail": {},
    }


def warm(base):
    def call(item):
        method, path, payload = item
        try:
            if payload is not None:
                return path, post(base + path, payload, timeout=600)[0]
            req = urllib.request.Request(base + path, method=method)
            with urllib.request.urlopen(req, timeout=600) as resp:
                return path, resp.status
        except urllib.error.HTTPError as e:
            return path, e.code
        except OSError as e:  # nothing listens, or no answer in time
            return path, str(e)

    # One request per function; any answer but a 5xx means it is up.
    calls = [
        ("GET", "/fhir/metadata", None),  # resources
        ("GET", "/fhir/$export", None),  # kickoff (400: no Prefer header)
        ("GET", "/fhir/$export-jobs/warm-up", None),  # status (404)
        ("GET", "/fhir/$export-jobs/warm-up/files/x", None),  # files (404)
        ("GET", "/fhir/.well-known/smart-configuration", None),  # token
        ("GET", "/fhir/$export-schedules", None),  # schedules
        ("POST", "/2015-03-31/functions/worker/invocations", {"Records": []}),
        ("POST", "/2015-03-31/functions/scheduler/invocations", tick(time.time())),
        ("POST", "/2015-03-31/functions/sweeper/invocations", tick(time.time())),
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(call, calls))
    failed = [
        f"{path}: {status}"
        for path, status in results
        if not isinstance(status, int) or status >= 500
    ]
    if failed:
        sys.exit("these functions did not start: " + ", ".join(failed))


def clock(base):
    """The scheduler at the start of every minute, the sweeper every hour
    (each rule's first event comes one period after it is made)."""
    next_sweep = time.time() + 3600
    while True:
        now = time.time()
        time.sleep(60 - now % 60)
        at = time.time() // 60 * 60
        try:
            status, body = invoke(base, "scheduler", tick(at))
            if status != 200 or json.loads(body).get("fired"):
                say(f"scheduler: {status} {body[:300].decode(errors='replace')}")
            if at >= next_sweep:
                next_sweep += 3600
                status, body = invoke(base, "sweeper", tick(at))
                say(f"sweeper: {status} {body[:300].decode(errors='replace')}")
        except Exception as e:  # the next minute tries again
            say(f"scheduler or sweeper: {e}")


def feed(base, queue_url):
    """The event source mapping (BatchSize 5, ReportBatchItemFailures): a
    long poll, one invocation per batch, and the messages the worker did not
    report as failed deleted. A failed invocation leaves its batch to come
    back after the visibility timeout, as on AWS."""
    threading.Thread(target=clock, args=(base,), daemon=True).start()
    sqs = boto3.client("sqs")
    arn = queue_arn(sqs, queue_url)
    while True:
        try:
            got = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=5,
                WaitTimeSeconds=20,
                MessageSystemAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                continue
            records = [
                {
                    "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"], "attributes": m.get("Attributes", {}),
                    "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs", "eventSourceARN": arn,
                    "awsRegion": arn.split(":")[3],
                }
                for m in got
            ]
            status, body = invoke(base, "worker", {"Records": records})
            if status != 200:
                say(f"worker invocation failed: {status} {body[:300]!r}")
                continue
            failed = {f["itemIdentifier"] for f in json.loads(body).get("batchItemFailures", [])}
            for m in got:
                if m["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            say(f"worker: {len(got)} message(s), {len(failed)} reported failed")
        except Exception as e:  # LocalStack or the function restarting: try again
            say(f"feeding the worker: {e}")
            time.sleep(2)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"provision": provision, "warm": warm, "feed": feed}[command](*args)
