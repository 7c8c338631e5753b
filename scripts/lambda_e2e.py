"""Drives one whole export through the function binaries that
`cargo lambda watch` serves, the way API Gateway and the SQS event source
would: kick-off, the worker fed from the real queue, status polls, the 303
to a presigned URL, the download; then checks the downloaded lines against
the store's own count. Run by scripts/lambda-e2e.sh."""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

import boto3

FHIR = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(method, url, headers=None, body=None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with OPENER.open(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def invoke_worker(base, sqs, queue_url):
    """One worker invocation: a batch from the queue as an SQS event; what
    the function does not report as failed is deleted (as the event source
    mapping does). Returns how many messages it handled."""
    got = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=60,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
    ).get("Messages", [])
    if not got:
        return 0
    records = [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
            "awsRegion": "us-east-1",
        }
        for m in got
    ]
    status, _, body = request(
        "POST",
        f"{base}/2015-03-31/functions/worker/invocations",
        {"Content-Type": "application/json"},
        json.dumps({"Records": records}).encode(),
    )
    if status != 200:
        sys.exit(f"worker invocation failed: {status} {body[:500]!r}")
    failed = {f["itemIdentifier"] for f in json.loads(body).get("batchItemFailures", [])}
    print(f"worker function: {len(got)} messages, {len(failed)} reported failed")
    for m in got:
        if m["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return len(got)


def invoke_scheduler(base, payload):
    status, _, body = request(
        "POST",
        f"{base}/2015-03-31/functions/scheduler/invocations",
        {"Content-Type": "application/json"},
        json.dumps(payload).encode(),
    )
    assert status == 200, (status, body[:300])
    return json.loads(body)


def scheduled_export(args, sqs, fhir, expected):
    """A schedule through the schedules function, its run started by the
    scheduler function (as its rate(1 minute) rule invokes it), the run's
    manifest from the schedule's latest-run URL."""
    body = {"name": "e2e-nightly", "cadence": "rate(1 day)", "export": "$export?_type=Patient"}
    status, headers, reply = request(
        "POST", f"{fhir}/$export-schedules",
        {"Content-Type": "application/json", "Accept": "application/json"},
        json.dumps(body).encode(),
    )
    assert status == 201, (status, reply[:500])
    schedule = json.loads(reply)
    print(f"schedules function: 201, schedule {schedule['id']}, next run {schedule['nextRunAt']}")
    tick = {"version": "0", "id": "e2e-tick", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012",
            "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
            "resources": [], "detail": {}}
    fired = invoke_scheduler(args.base, tick)
    assert fired == {"fired": 1}, fired
    assert invoke_scheduler(args.base, tick) == {"fired": 0}
    print("scheduler function: one run started; a second tick starts none")
    latest = f"{fhir}/$export-schedules/{schedule['id']}/runs/latest"
    started = time.time()
    while time.time() - started < 600:
        status, headers, reply = request("GET", latest, {"Accept": "application/json"})
        if status == 200:
            break
        assert status == 202, (status, reply[:500])
        if not invoke_worker(args.base, sqs, args.queue_url):
            time.sleep(0.5)
    else:
        sys.exit("the scheduled run did not finish in 10 minutes")
    manifest = json.loads(reply)
    count = sum(e["count"] for e in manifest["output"] if e["type"] == "Patient")
    assert count == expected["Patient"], (count, expected["Patient"])
    print(f"schedules function: the latest run's manifest lists {count} Patients, "
          f"as the store holds")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="cargo lambda watch's origin")
    p.add_argument("--queue-url", required=True)
    p.add_argument("--expected", required=True, help="JSON: resources per type in the store")
    args = p.parse_args()
    expected = json.loads(args.expected)
    sqs = boto3.client("sqs")
    fhir = f"{args.base}/fhir"

    status, _, body = request("GET", f"{fhir}/metadata", {"Accept": "application/fhir+json"})
    assert status == 200, (status, body[:300])
    print(f"resources function: CapabilityStatement {json.loads(body)['status']}")

    status, headers, body = request("GET", f"{fhir}/$export", FHIR)
    assert status == 202, (status, body[:500])
    location = headers["Content-Location"]
    print(f"kickoff function: 202, Content-Location {location}")

    started, invocations, manifest = time.time(), 0, None
    while time.time() - started < 600:
        status, headers, body = request("GET", location, {"Accept": "application/json"})
        if status == 200:
            manifest = json.loads(body)
            break
        assert status == 202, (status, body[:500])
        print(f"status function: 202, X-Progress {headers.get('X-Progress')!r}, "
              f"Retry-After {headers.get('Retry-After')}")
        handled = invoke_worker(args.base, sqs, args.queue_url)
        invocations += bool(handled)
        if not handled:
            time.sleep(0.5)
    if manifest is None:
        sys.exit("the export did not finish in 10 minutes")
    print(f"status function: 200 after {time.time() - started:.1f} s "
          f"and {invocations} worker invocations")
    print("manifest:")
    print(json.dumps({k: v for k, v in manifest.items() if k != "output"}, indent=2))
    for entry in manifest["output"]:
        print(f"  {entry['type']:<20} count {entry['count']:>6}  {entry['url']}")

    downloaded = {}
    for entry in manifest["output"]:
        status, headers, _ = request("GET", entry["url"], {"Accept": "application/fhir+ndjson"})
        assert status == 303, (entry["url"], status)
        link = headers["Location"]
        assert "X-Amz-Signature=" in link and "X-Amz-Expires=" in link, link
        with urllib.request.urlopen(link, timeout=120) as resp:
            lines = [json.loads(l) for l in resp.read().decode().splitlines() if l.strip()]
        assert len(lines) == entry["count"], (entry, len(lines))
        assert all(r["resourceType"] == entry["type"] for r in lines)
        downloaded[entry["type"]] = downloaded.get(entry["type"], 0) + len(lines)
    print("files function: every URL answered 303 to a presigned S3 link")

    print(f"{'type':<20} {'downloaded':>10} {'in store':>10}")
    for t in sorted(set(expected) | set(downloaded)):
        print(f"{t:<20} {downloaded.get(t, 0):>10} {expected.get(t, 0):>10}")
    total_d, total_e = sum(downloaded.values()), sum(expected.values())
    print(f"{'total':<20} {total_d:>10} {total_e:>10}")
    if downloaded != expected:
        sys.exit("MISMATCH: the downloaded lines differ from the store")

    status, _, body = request(
        "POST",
        f"{args.base}/2015-03-31/functions/sweeper/invocations",
        {"Content-Type": "application/json"},
        json.dumps({"version": "0", "id": "e2e", "detail-type": "Scheduled Event",
                    "source": "aws.events", "account": "123456789012",
                    "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
                    "resources": [], "detail": {}}).encode(),
    )
    assert status == 200, (status, body[:300])
    print(f"sweeper function: {body.decode()} (nothing has expired yet)")

    scheduled_export(args, sqs, fhir, expected)

    status, _, _ = request("DELETE", location)
    assert status == 202, status
    status, _, _ = request("GET", location)
    assert status == 404, status
    print("status function: DELETE 202, then 404")
    print("OK: the export through the Lambda functions matches the store")


if __name__ == "__main__":
    main()
