"""The errors :mod:`vaelib` raises for bad input, in one public module.

Every input error derives from :class:`VaelibInputError`, itself a ``ValueError``, so
``except ValueError`` catches them all. Each message names the argument and the problem.
"""

__all__ = [
    "VaelibInputError",
    "ShapeError",
    "NonFiniteError",
    "ProbabilityError",
    "NotPositiveDefiniteError",
    "NotLowerTriangularError",
    "TrainingDiverged",
]


class VaelibInputError(ValueError):
    """Base class of the input errors raised by :mod:`vaelib`."""


class ShapeError(VaelibInputError):
    """Tensor shapes are incompatible (the message quotes the shapes)."""


class NonFiniteError(VaelibInputError):
    """A tensor holds ``nan`` or infinite entries where finite ones are required."""


class ProbabilityError(VaelibInputError):
    """A tensor is not a valid probability vector along its last axis."""


class NotPositiveDefiniteError(VaelibInputError):
    """A matrix that should be a covariance is not symmetric positive definite."""


class NotLowerTriangularError(VaelibInputError):
    """A matrix that should be a Cholesky-type scale factor is not one."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
