"""Content hashes: MD5 as DVC and the manifests write it, and the digest work in progress is checked against."""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20  # bytes read at a time: a 528 MB model file is hashed in constant memory


def _hash_file(path: str | os.PathLike, hasher) -> "hashlib._Hash":
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            hasher.update(block)
    return hasher


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file's bytes (hex), as `dvc.lock` and the sample manifests record files."""
    return _hash_file(path, hashlib.md5()).hexdigest()


def bytes_digest(data) -> str:
    """A digest of `data` (bytes, or any buffer such as a contiguous numpy array): SHA-256, cut to 128 bits (hex),
    what work files in progress and reused feature chunks are checked against. SHA-256 because CPUs hash it in
    hardware (several times BLAKE2b's speed on this project's machines)."""
    return hashlib.sha256(data).hexdigest()[:32]


def file_digest(path: str | os.PathLike) -> str:
    """`bytes_digest` of a file's bytes, read in blocks."""
    return _hash_file(path, hashlib.sha256()).hexdigest()[:32]
