"""Exceptions raised by bpcompile. Each names the op or argument and the shapes/dtypes involved."""


class BPError(Exception):
    """Base class for every error bpcompile raises on purpose."""


class ShapeError(BPError, ValueError):
    """An op was given operands whose shapes do not fit its shape rule."""


class DTypeError(BPError, TypeError):
    """An op or a call received a dtype it cannot take."""


class ArgumentError(BPError, ValueError):
    """A compiled function was called with a missing, extra, mis-shaped or mis-typed argument."""


class GradientError(BPError, ValueError):
    """The gradient cannot be built: bad `wrt`, non-scalar loss, or a non-differentiable op."""


class NonDifferentiableError(GradientError):
    """A cotangent reached an op that has no derivative (e.g. floor, round)."""


class DeclarationError(BPError, ValueError):
    """A declaration (bp.input, bp.param) is malformed, e.g. a name that is not an identifier."""


class BackendError(BPError, RuntimeError):
    """A backend cannot lower an op or is unavailable."""


class SpecError(BPError, ValueError):
    """A model spec file is malformed."""


class IndexRangeError(ArgumentError, IndexError):
    """An index computed in the graph fell outside its op's range at run time (take, one_hot)."""
