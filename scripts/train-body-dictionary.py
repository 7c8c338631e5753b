#!/usr/bin/env python3
"""Trains the zstd dictionary that DynamoDB version items are compressed
with (shared/dictionaries/fhir-r4-1.zdict; shared/src/domain/body_codec.rs).

The samples are the resources of half the Synthea patients of
tests/data/synthea-r4-100 (every other patient by id, with the resources
that reference them) plus the resources that reference no patient
(Organization, Practitioner, Location...). The other half is held out, so
that the ratio on it is what a store of unseen patients gets:

    python3 -m venv /tmp/zd && /tmp/zd/bin/pip install zstandard==0.23.0
    /tmp/zd/bin/python scripts/train-body-dictionary.py [OUT]

A dictionary, once shipped, is never changed: items name the dictionary
they were written with, so a new one gets a new number (fhir-r4-2) and the
old stays in the binary for the items that use it.
"""
import glob
import gzip
import json
import re
import sys

import zstandard

SIZE = 64 * 1024
DICT_ID = 1
LEVEL = 9  # as body_codec.rs compresses


def resources():
    for path in sorted(glob.glob("tests/data/synthea-r4-100/*.ndjson.gz")):
        for line in gzip.open(path):
            line = line.strip()
            if line:
                yield line


def owner(line):
    m = re.search(rb'Patient/([A-Za-z0-9\-.]+)', line)
    if m:
        return m.group(1).decode()
    r = json.loads(line)
    return r["id"] if r["resourceType"] == "Patient" else None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "shared/dictionaries/fhir-r4-1.zdict"
    lines = list(resources())
    patients = sorted({json.loads(l)["id"] for l in lines if b'"resourceType":"Patient"' in l})
    trained = set(patients[::2])
    train, held_out = [], []
    for line in lines:
        o = owner(line)
        (held_out if o is not None and o not in trained else train).append(line)
    d = zstandard.train_dictionary(SIZE, train, dict_id=DICT_ID, level=LEVEL, threads=1)
    with open(out, "wb") as f:
        f.write(d.as_bytes())
    c = zstandard.ZstdCompressor(level=LEVEL, dict_data=d, write_dict_id=False, write_checksum=False)
    for name, part in (("trained on", train), ("held out", held_out)):
        raw = sum(map(len, part))
        packed = sum(len(c.compress(r)) + 1 for r in part)
        print(f"{name}: {len(part)} resources, {raw / len(part):.0f} bytes each, "
              f"{packed / len(part):.0f} compressed ({raw / packed:.2f}x)")
    print(f"wrote {out} ({len(d.as_bytes())} bytes)")


if __name__ == "__main__":
    main()
