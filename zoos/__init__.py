"""wsl.zoos: where populations come from — architectures, datasets, the population trainer,
recipes and builds, the zoo store.

`Zoo` and `open_zoo` are imported lazily so that `import wsl.zoos.architectures` stays light.
"""

__all__ = ["Zoo", "open_zoo"]


def __getattr__(name):
    if name in __all__:
        from wsl.zoos import store

        return getattr(store, name)
    raise AttributeError(f"module 'wsl.zoos' has no attribute {name!r}")
