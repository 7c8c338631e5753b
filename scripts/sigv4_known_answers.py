"""Prints botocore's SigV4 signature of the request that
shared/src/aws/json_api.rs's signing test signs, at the same time and with
the same credentials: the known answers that test compares with.

Run with the venv .ci/run makes (moto brings botocore):
    .venv/bin/python scripts/sigv4_known_answers.py
"""
import datetime
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

BODY = b'{"Name":"/bulk-export/signing-key","WithDecryption":true}'
TIME = datetime.datetime(2026, 12, 1, 12, 30, 0)

for token in [None, "session-token"]:
    credentials = Credentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    request = AWSRequest(
        method="POST",
        url="https://ssm.eu-west-1.amazonaws.com/",
        data=BODY,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonSSM.GetParameter",
        },
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=TIME):
        SigV4Auth(credentials, "ssm", "eu-west-1").add_auth(request)
    print(f"session token {token!r}:")
    for name in ["X-Amz-Date", "X-Amz-Security-Token", "Authorization"]:
        if name in request.headers:
            print(f"  {name}: {request.headers[name]}")
