"""cnncli: train, evaluate and run small grayscale CNN classifiers from the command line.

Every forward and backward pass is derived by hand (see docs and ../shared/seed) and compiled
with Numba; this package imports no ML framework. Heavy modules are imported lazily.
"""

__version__ = "0.1.0"
