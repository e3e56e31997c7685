"""SSH key files (bottom floor): new ed25519 key pairs and the public half of an existing key."""
from __future__ import annotations

import os
from pathlib import Path

from cislaves import TOOL


def generate_keypair(path: Path, comment: str = TOOL) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600) to `path`; return the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    Path(str(path) + ".pub").write_text(f"{public} {comment}\n")
    return f"{public} {comment}"


def public_key_of(private_key_file: Path) -> str:
    """The OpenSSH public key line of an existing private key file (RSA, ECDSA or ed25519)."""
    from cryptography.hazmat.primitives import serialization

    data = Path(private_key_file).read_bytes()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
