"""The admin token: what mutating endpoints ask for."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_FILENAME = "server-token"


def load_or_create_token(library_path: Path) -> str:
    """The token stored in the library folder (mode 0600), made on first use."""
    path = Path(library_path) / TOKEN_FILENAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)  # someone loosened it: the token is a password
        token = path.read_text().strip()
        if token:
            return token
        path.unlink()
        return load_or_create_token(library_path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def token_matches(header: str | None, token: str) -> bool:
    """True for `Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return secrets.compare_digest(value.strip().encode(), token.encode())
