"""mnistlab: the dense networks of the tutorial, with exact Keras semantics, trained fast."""

from mnistlab.errors import UserError
from mnistlab.spec import RunSpec, load, preset, with_overrides
from mnistlab.training import TrainResult, train

__all__ = ["RunSpec", "TrainResult", "UserError", "load", "preset", "train", "with_overrides"]
__version__ = "0.1.0"
