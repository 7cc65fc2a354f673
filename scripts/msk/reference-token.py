"""MSK IAM token from AWS's official signer (aws-msk-iam-sasl-signer-python), for fixed inputs.

The golden reference of tests/msk_token.rs. Reads the inputs from the environment (test values only):
  MSK_REF_REGION, MSK_REF_ACCESS_KEY, MSK_REF_SECRET_KEY, MSK_REF_SESSION_TOKEN (may be empty: none),
  MSK_REF_EPOCH (signing time, Unix seconds)
and prints one JSON object: {"token": ..., "expiry_ms": ..., "user_agent": ...}.

The signer takes its time from botocore's SigV4 signer, which reads `botocore.auth.get_current_datetime`;
that one function is replaced by the fixed time. Credentials come in through the signer's public
`generate_auth_token_from_credentials_provider`, with a botocore CredentialProvider returning them.
"""
import datetime
import importlib.metadata
import json
import os

import botocore.auth
from botocore.credentials import CredentialProvider, Credentials

from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

epoch = int(os.environ["MSK_REF_EPOCH"])
fixed = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(tzinfo=None)
botocore.auth.get_current_datetime = lambda remove_tzinfo=True: fixed


class FixedCredentials(CredentialProvider):
    METHOD = "fixed-test-credentials"

    def load(self):
        return Credentials(
            os.environ["MSK_REF_ACCESS_KEY"],
            os.environ["MSK_REF_SECRET_KEY"],
            os.environ.get("MSK_REF_SESSION_TOKEN") or None,
        )


token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
    os.environ["MSK_REF_REGION"], FixedCredentials()
)
version = importlib.metadata.version("aws-msk-iam-sasl-signer-python")
print(json.dumps({"token": token, "expiry_ms": expiry_ms, "user_agent": f"aws-msk-iam-sasl-signer-python/{version}"}))
