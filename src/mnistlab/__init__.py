"""mnistlab: the dense networks of the tutorial, with exact Keras semantics, trained fast."""

from mnistlab import engine

engine.use_cpu_cores()  # before anything starts JAX

from mnistlab import runs  # noqa: E402
from mnistlab.errors import UserError  # noqa: E402
from mnistlab.spec import RunSpec, load, preset, with_overrides  # noqa: E402
from mnistlab.training import Callback, History, TrainResult, resume, train  # noqa: E402


def sweep(spec, **kwargs):
    """Run a sweep (a `search.SweepSpec`, a dict, or the path of a sweep TOML); see `search.run_sweep`."""
    from pathlib import Path

    from mnistlab import search

    if isinstance(spec, (str, Path)):
        spec = search.load_sweep(spec)
    elif isinstance(spec, dict):
        spec = search.sweep_from_dict(spec)
    return search.run_sweep(spec, **kwargs)


def summary(spec):
    """Keras' model.summary() of a `RunSpec`, a TOML file or a run folder; shown, the table:
    `mnistlab.summary(mnistlab.preset("seed"))`."""
    from mnistlab import data, model, spec as spec_lib

    spec = spec if isinstance(spec, RunSpec) else spec_lib.from_source(spec)
    return model.summary(spec.model, data.get_info(spec.dataset).image_shape)


engine.enable_compile_cache()  # from Python as from the command line

__all__ = ["Callback", "History", "RunSpec", "TrainResult", "UserError", "load", "preset", "resume", "summary",
           "sweep", "train", "with_overrides"]
__version__ = runs.VERSION
