"""cislaves: bake CI worker images on several clouds, and run a third-party CI for Gerrit."""

__version__ = "0.1.0"
TOOL = "cislaves"



def lazy_module(name: str) -> "LazyModule":
    """The module `name`, imported on its first attribute access instead of now: the fabfile names the
    pipeline's modules up front, yet `fab -l` (and a task that does not need them) never pays for
    importing them, pydantic and an SDK."""
    return LazyModule(name)


class LazyModule:
    """Stands for a module until an attribute is asked for. Not a module (nor importlib's LazyLoader,
    whose modules load when invoke's task scan asks their __class__): scanning it imports nothing."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
