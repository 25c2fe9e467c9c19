"""cnncli: train, evaluate and run small grayscale CNN classifiers from the command line.

Every forward and backward pass is derived by hand (see docs and ../shared/seed) and compiled
with Numba; this package imports no ML framework. Heavy modules are imported lazily.
"""

__version__ = "0.1.0"

_SUBMODULES = ("augment", "checkpoint", "data", "evaluate", "export", "model", "optim", "predictor")


def __getattr__(name):
    """cnncli.model, cnncli.data, ... after a bare `import cnncli`, imported on first use (as
    `from cnncli import model` does), so `cnn --help` stays as light as before."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
