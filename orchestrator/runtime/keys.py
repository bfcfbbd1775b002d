"""The router's API keys: who may call /v1, and which deployments each key sees.

A key file (YAML or JSON) holds names and sha256 digests, never keys:
``{"keys": [{"name": "team-a", "sha256": "<64 hex>", "deployments": ["tiny-chat"]}]}`` (no ``deployments``:
every deployment). ``moxin keys create`` writes it; the router (``KeyRing``) reads it and reads it again when it
changes, keeping the last good one when the new one is broken. A presented key is hashed and compared with every
stored digest in constant time, so neither the comparison nor its position in the file leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.output import to_yaml, write_atomic
from orchestrator.spec.base import Name

log = logging.getLogger(__name__)

KEY_PREFIX = "mx-"
"""What every generated key starts with, so a leaked one is recognisable (secret scanners, logs)."""
RELOAD_CHECK_S = 1.0


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    """Who holds the key (a DNS-1123 label): what metrics and logs show in place of the key."""
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    """Hex sha256 of the key; the key itself is stored nowhere."""
    deployments: tuple[Name, ...] | None = None
    """The deployments this key may use and see; absent: all of them."""

    def allows(self, deployment: str) -> bool:
        return self.deployments is None or deployment in self.deployments


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[ApiKey, ...] = ()
    """Every key the router accepts; an empty list refuses every /v1 request."""

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [k.name for k in self.keys]
        digests = [k.sha256.lower() for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"key names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
        if len(set(digests)) != len(digests):
            raise ValueError("two entries hold the same sha256")
        return self


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


def read_key_file(path: Path) -> KeyFile:
    """Parse and check a key file; ValueError (OSError when unreadable) says what is wrong."""
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    try:
        return KeyFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def write_key_file(path: Path, keys: KeyFile) -> None:
    """Write atomically (a temporary file renamed over the old one), readable by its owner only (0600)."""
    data = keys.model_dump(mode="json", exclude_none=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else to_yaml(data))
    os.chmod(path, 0o600)


def create_key(path: Path, name: str, deployments: tuple[str, ...] = ()) -> str:
    """A new random key, its digest appended to ``path`` (created if absent). Returns the key: it exists nowhere
    else, so the caller shows it once."""
    current = read_key_file(path) if path.exists() else KeyFile()
    if any(k.name == name for k in current.keys):
        raise ValueError(f"{path} already has a key named {name!r}: pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        entry = ApiKey(name=name, sha256=digest(key), deployments=tuple(deployments) or None)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    write_key_file(path, KeyFile(keys=(*current.keys, entry)))
    return key


def bearer_token(values: list[str]) -> str | None:
    """The token of exactly one ``Authorization: Bearer <token>`` header; None for anything else."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


@dataclass(frozen=True)
class _Stored:
    key: ApiKey
    digest: bytes


class KeyRing:
    """The key file as the router uses it. Loading at construction raises (a router must not start open or
    broken); later reloads that fail are logged and the last good keys stay."""

    def __init__(self, path: Path, check_every_s: float = RELOAD_CHECK_S) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._stamp = self._file_stamp()
        self._stored = self._load()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self) -> tuple[_Stored, ...]:
        return tuple(_Stored(k, bytes.fromhex(k.sha256)) for k in read_key_file(self.path).keys)

    def refresh(self) -> None:
        """Read the file again if it changed since the last look (at most every ``check_every_s``)."""
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._stored = self._load()
            log.info("API keys reloaded from %s: %d key(s)", self.path, len(self._stored))
        except (OSError, ValueError) as exc:
            log.error("API keys not reloaded, the last good ones stay: %s", exc)

    def identify(self, presented: str) -> ApiKey | None:
        """The entry whose digest matches ``presented``. Every entry is compared, in constant time each."""
        self.refresh()
        probe = hashlib.sha256(presented.encode("utf-8", "backslashreplace")).digest()
        found: ApiKey | None = None
        for stored in self._stored:
            if hmac.compare_digest(probe, stored.digest):
                found = stored.key
        return found

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return tuple(s.key for s in self._stored)


def summary(keys: KeyFile) -> list[dict[str, Any]]:
    """What ``moxin keys list`` shows: names and deployments, no digests."""
    return [{"name": k.name, "deployments": list(k.deployments) if k.deployments is not None else "all"}
            for k in keys.keys]
