"""Region names are checked against the cloud (DescribeRegions on moto) before anything is created,
through the real `fab`: a misspelt region or copy region is one line naming the key, with a guess."""
from __future__ import annotations

import pytest
import yaml

from tests.cli import fab


@pytest.mark.parametrize("settings, key, guess", [
    ({"region": "us-weest-2"}, "clouds.ec2.region: 'us-weest-2'", "us-west-2"),
    ({"copy_regions": ["eu-west-1", "us-esat-1"]}, "clouds.ec2.copy_regions[1]: 'us-esat-1'", "us-east-1"),
])
def test_a_misspelt_region_fails_before_anything_is_created(proxy, tmp_path, left, settings, key, guess):
    (tmp_path / "cislaves.yaml").write_text(yaml.safe_dump(
        {"data_dir": str(tmp_path / "data"), "clouds": {"ec2": {"endpoint_url": proxy.url, **settings}}}))
    env = {"CISLAVES_CONFIG": str(tmp_path / "cislaves.yaml"), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    result = fab("it:cloud=ec2,distribution=centos7", env=env, timeout=60)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and "<html" not in result.stderr, result.stderr
    assert key in errors[0] and f"did you mean {guess}?" in errors[0], errors[0]
    assert set(proxy.actions) == {"DescribeRegions"}  # asked once, nothing else: nothing created
