#!/usr/bin/env python3
"""The scale model: time and cost of exporting 10M, 100M and 1B resources on
AWS, computed from what one measured export consumed (its `job-cost` report:
requests per resource, bytes per resource) and the engine's CPU per resource
(the local benchmark), under the stated AWS limits. Prints Markdown (the
operator guide's scale model, docs/src/operator/scale-model.md, is this output).

    benches/scale_model.py --job-cost REPORT.json --cpu-us-per-resource 8.1 \
        --bytes-per-resource 965

REPORT.json: the `job-cost` line of benches/moto-export.sh, or the output
of `bulk-export-aws job-cost JOB` on a deployment.

Everything is linear in the number of resources except the limits; moto's
capacity units are fixed per call, so read units are computed from the bytes
read instead (strongly consistent: one unit per 4 KB).
"""
import argparse
import json
import math

# On-demand list prices, us-east-1 (shared/src/domain/cost.rs, same date).
PRICES_AS_OF = "2025-01-15"
RRU = 0.125 / 1e6
WRU = 0.625 / 1e6
S3_A = 0.005 / 1e3
S3_B = 0.0004 / 1e3
S3_GB_MONTH = 0.023
SQS_REQ = 0.40 / 1e6
LAMBDA_GB_S = 0.0000133334
LAMBDA_REQ = 0.20 / 1e6
EGRESS_GB = 0.09
S3_CLASS_A = {"PutObject", "UploadPart", "UploadPartCopy", "CreateMultipartUpload",
              "CompleteMultipartUpload", "CopyObject", "ListObjectsV2",
              "ListMultipartUploads", "ListParts"}
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}
GB = 1024 ** 3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job-cost", required=True, help="a job-cost JSON report")
    p.add_argument("--cpu-us-per-resource", type=float, required=True,
                   help="engine CPU per resource (local benchmark, CPU s / resources)")
    p.add_argument("--item-overhead-bytes", type=int, default=150,
                   help="attributes stored beside each resource's body")
    p.add_argument("--worker-concurrency", type=int, default=20,
                   help="WorkerMaxConcurrency (template default 20)")
    p.add_argument("--worker-memory-mb", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=5,
                   help="messages per worker invocation, handled at once (template: 5)")
    p.add_argument("--table-read-units-per-s", type=float, default=40000,
                   help="DynamoDB on-demand table read quota (default account quota)")
    p.add_argument("--partition-read-units-per-s", type=float, default=3000)
    p.add_argument("--page-latency-ms", type=float, default=50,
                   help="one 1 MB Query page, strongly consistent (assumed)")
    p.add_argument("--s3-puts-per-s-per-prefix", type=float, default=3500)
    p.add_argument("--part-mib", type=float, default=8, help="PartSizeMiB")
    p.add_argument("--resources-per-file", type=int, default=100_000, help="MaxResourcesPerFile")
    p.add_argument("--shards", type=int, default=16,
                   help="partitions of the version items; every type shares them")
    p.add_argument("--gzip-ratio", type=float, default=0.111,
                   help="gzip twin bytes / NDJSON bytes (benches/README.md: Compressing export files)")
    p.add_argument("--bytes-per-resource", type=float, default=None,
                   help="NDJSON bytes per resource (the bench's export line: MB / resources); "
                        "default: bytes stored / (1 + gzip ratio), which counts spills too")
    p.add_argument("--stored-bytes-per-resource", type=float, default=None,
                   help="a body's bytes at rest in DynamoDB (compressed: the body_codec bench); "
                        "default: the NDJSON bytes (plain bodies)")
    a = p.parse_args()

    r = json.load(open(a.job_cost))
    usage = r["usage"]
    n = r["resources"]
    per = lambda k: usage.get(k, 0.0) / n  # per resource
    stored = per("s3.bytesStored")  # files, twins and spills
    # NDJSON bytes per resource.
    body = a.bytes_per_resource or stored / (1 + a.gzip_ratio)
    # What DynamoDB reads (and charges): the body at rest and the attributes.
    item = (a.stored_bytes_per_resource or body) + a.item_overhead_bytes

    # Requests per resource as measured, except read units (from bytes) and
    # S3 requests: a small export's few files make per-file requests look
    # large per resource, so they are computed for full files instead.
    measured_s3_a = sum(v for k, v in usage.items() if k.startswith("requests.s3.") and k[12:] in S3_CLASS_A) / n
    part = a.part_mib * 1024 * 1024
    s3_a = (body * (1 + a.gzip_ratio) / part                 # UploadPart, file and twin
            + 2 * 2 / a.resources_per_file)                    # Create/Complete, file and twin
    s3_b = body / part                                        # the file read back for its twin
    sqs = (sum(v for k, v in usage.items() if k.startswith("requests.sqs.")) + 2 * usage.get("worker.handlings", 0)) / n
    writes = per("dynamodb.writeUnits") + per("accounting.writes")
    handlings = per("worker.handlings")
    read_units = item / 4096  # consistent reads, pages of up to 1 MB

    # Worker time: CPU at the Lambda's vCPU share, or waiting on pages.
    vcpu = min(a.worker_memory_mb / 1769, 6)
    cpu_rate = vcpu / (a.cpu_us_per_resource * 1e-6)  # resources/s per invocation
    io_rate = a.batch_size * (1024 * 1024 / item) / (a.page_latency_ms / 1000)
    per_invocation = min(cpu_rate, io_rate)
    gb_s_per_resource = (a.worker_memory_mb / 1024) / per_invocation

    cost_per_resource = {
        "DynamoDB reads": read_units * RRU,
        "DynamoDB writes": writes * WRU,
        "S3 requests": s3_a * S3_A + s3_b * S3_B,
        # Files and their gzip twins for 7 days (spills are deleted within
        # the export, so they are not in it).
        "S3 storage (7 days)": body * (1 + a.gzip_ratio) / GB * S3_GB_MONTH * 7 / 30,
        "SQS": sqs * SQS_REQ,
        "Lambda": handlings * LAMBDA_REQ + gb_s_per_resource * LAMBDA_GB_S,
    }
    total_per_resource = sum(cost_per_resource.values())

    limits = {
        f"workers: {a.worker_concurrency} x {per_invocation:,.0f}/s": a.worker_concurrency * per_invocation,
        f"table read quota: {a.table_read_units_per_s:,.0f} RRU/s": a.table_read_units_per_s * 4096 / item,
        f"S3 PUTs: {a.s3_puts_per_s_per_prefix:,.0f}/s per job prefix":
            a.s3_puts_per_s_per_prefix * a.part_mib * 1024 * 1024 / body,
    }
    limits[f"partition reads: {a.shards} shards x {a.partition_read_units_per_s:,.0f} RRU/s"] = \
        a.shards * a.partition_read_units_per_s * 4096 / item
    bottleneck, rate = min(limits.items(), key=lambda kv: kv[1])

    print(f"Inputs: `{a.job_cost}` ({n:,} resources; {body:,.0f} NDJSON bytes per resource, "
          f"{a.stored_bytes_per_resource or body:,.0f} at rest, "
          f"{read_units:.3f} read units per resource; S3 class A requests per million resources: "
          f"{s3_a * 1e6:,.0f} for full files, {measured_s3_a * 1e6:,.0f} as measured), engine CPU {a.cpu_us_per_resource} us per resource, "
          f"prices of {PRICES_AS_OF} (us-east-1, on demand).\n")
    print("| resources | time at the first bottleneck | cost (egress excluded) | egress, plain | egress, gzip |")
    print("|---|---|---|---|---|")
    for total in (10_000_000, 100_000_000, 1_000_000_000):
        secs = total / rate
        t = f"{secs / 60:,.1f} min" if secs < 3 * 3600 else f"{secs / 3600:,.1f} h"
        egress = total * body / GB * EGRESS_GB
        print(f"| {total:,} | {t} | ${total * total_per_resource:,.2f} | ${egress:,.2f} | ${egress * a.gzip_ratio:,.2f} |")
    print(f"\nPer million resources: ${total_per_resource * 1e6:.4f}, of which " +
          ", ".join(f"{k} ${v * 1e6:.4f}" for k, v in cost_per_resource.items()) + ".\n")
    print("| limit | resources/s |")
    print("|---|---|")
    for k, v in sorted(limits.items(), key=lambda kv: kv[1]):
        print(f"| {k} | {v:,.0f} |")
    print(f"\nFirst bottleneck: **{bottleneck}** ({rate:,.0f} resources/s).")


if __name__ == "__main__":
    main()
