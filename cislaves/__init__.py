"""cislaves: bake CI worker images on several clouds, and run a third-party CI for Gerrit."""

__version__ = "0.1.0"
TOOL = "cislaves"
