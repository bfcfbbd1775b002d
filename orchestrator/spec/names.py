"""The rules that turn user names (deployments, models with dots, pools) into safe identifiers.

One module for every reader: the Ray runtime's replica ids (``runtime/desired.py``), the Kubernetes object
names and label values the renderers write (``render/helm.py``, ``render/kuberay.py``). Pure string functions.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 52
"""Longest object name: LeaderWorkerSet pods are ``<name>-<group>-<worker>`` and carry the name in a
63-character label, so names stay well under 63."""
MAX_LABEL_VALUE = 63
"""Kubernetes' limit on a label value."""


def slug(text: str) -> str:
    """Lowercase letters, digits and single '-' only (every other run of characters becomes one '-'), no '-'
    at either end: 'GLM-4.5-Air' -> 'glm-4-5-air'. May be empty."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def object_name(text: str) -> str:
    """A DNS-1035 label of at most MAX_NAME characters: the ``slug``, starting with a letter ('m-' is put in
    front otherwise); a long name keeps a hash of the whole text so that names stay distinct."""
    name = slug(text) or "x"
    if not name[0].isalpha():
        name = "m-" + name
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:6]
        name = name[:MAX_NAME - 7].rstrip("-") + "-" + digest
    return name


def label_value(text: str) -> str:
    """A valid Kubernetes label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends); unlike
    a name it keeps case and dots."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:MAX_LABEL_VALUE]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
