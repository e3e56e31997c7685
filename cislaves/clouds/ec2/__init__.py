"""The ec2 cloud driver (see driver.py); the package holds its settings, API calls and helpers."""
from cislaves.clouds.ec2.driver import EC2Cloud

__all__ = ["EC2Cloud"]
