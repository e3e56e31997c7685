"""Cloud endpoints that refuse connections (a free port of 127.0.0.1 that nothing listens on), for the
fast-failure tests (tests/test_failures.py) and their benchmark (bench/fast_failures.py): what a
failure costs when nothing answers at all."""
from __future__ import annotations

import json
from pathlib import Path

from tests.servers import free_port


def refused_clouds(folder: Path, port: int | None = None) -> dict:
    """The clouds section with EC2, OpenStack and GCE all at that port. Writes folder/key.json: a GCE
    service account (a fresh RSA key) whose token_uri is refused too."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    url = f"http://127.0.0.1:{port or free_port()}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (folder / "key.json").write_text(json.dumps({
        "type": "service_account", "project_id": "my-project-1", "private_key_id": "k1", "private_key": key,
        "client_email": "ci@my-project-1.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{url}/token"}))
    return {"ec2": {"endpoint_url": url},
            "openstack": {"auth_url": f"{url}/v3", "username": "u", "password": "p", "project_name": "p",
                          "user_domain_name": "Default", "project_domain_name": "Default"},
            "gce": {"project": "my-project-1", "credentials_file": "key.json", "api_endpoint": f"{url}/compute/v1/"}}


def aws_env(folder: Path) -> dict[str, str]:
    """Test credentials and region for botocore, and no AWS files of the user's (none exist in folder)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-west-2",
            "AWS_CONFIG_FILE": str(folder / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(folder / "none")}
