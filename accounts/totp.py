"""The code an authenticator would show now for a TOTP key: `python -m accounts.totp <base32 key>`.
For the demo's users, whose keys `make run` prints, and for the tests."""

import base64
import sys

from django_otp.oath import TOTP


def totp_code(secret: str, at: float | None = None) -> str:
    totp = TOTP(base64.b32decode(secret))
    if at is not None:
        totp.time = at
    return f"{totp.token():06d}"


if __name__ == "__main__":
    print(totp_code(sys.argv[1]))
