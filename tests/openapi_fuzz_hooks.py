"""Schemathesis hooks for tests/openapi_fuzz.rs.

An Idempotency-Key that comes back with another event is rightly answered 422
idempotency_key_reused, and a fuzzer cannot know which keys it sent before (it reuses small
values such as "0" all the time). So every valid key it generates is made unique; invalid
ones, which the negative tests send on purpose, are left as they are.
"""

import re
import uuid

import schemathesis

# A valid key of either operation (at most 250 characters: the batch's limit).
VALID = re.compile(r"^[!-~](?:[ -~]{0,248}[!-~])?$")


@schemathesis.hook
def map_headers(context, headers):
    if headers:
        for name in list(headers):
            value = headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and VALID.match(value):
                headers[name] = f"{value[:200]}-{uuid.uuid4().hex}"
    return headers
