"""JWT minting and checking for the local stack, shaped like Supabase's legacy API keys.

Supabase's `anon` and `service_role` keys are HS256 JWTs signed with the project's JWT secret;
PostgREST and Storage both trust any token signed with that secret and act as its `role` claim.
"""

from __future__ import annotations

import secrets
import time

import jwt

TEN_YEARS_SECONDS = 10 * 365 * 24 * 3600


class InvalidJwtError(Exception):
    """A token that Storage would refuse; the message mirrors node's `jsonwebtoken` wording."""


def new_jwt_secret() -> str:
    """A fresh secret, longer than the 32 characters PostgREST requires."""
    return secrets.token_urlsafe(32)


def mint_key(secret: str, role: str, *, ttl_seconds: int = TEN_YEARS_SECONDS, **claims: object) -> str:
    """An API key for `role` as `supabase start` prints them (iss, ref, role, iat, exp)."""
    now = int(time.time())
    payload = {"iss": "supabase", "ref": "localstack", "role": role, "iat": now, "exp": now + ttl_seconds}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256", headers={"typ": "JWT"})


def verify_token(token: str, secret: str) -> dict:
    """Claims of a valid token; raises InvalidJwtError with the message Storage would return."""
    if not token or token.count(".") != 2:
        raise InvalidJwtError("jwt malformed")
    try:
        return jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.ExpiredSignatureError as exc:
        raise InvalidJwtError("jwt expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidJwtError("invalid signature") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidJwtError("invalid algorithm") from exc
    except jwt.PyJWTError as exc:
        raise InvalidJwtError("jwt malformed") from exc
