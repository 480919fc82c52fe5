"""Core ML files on Linux: import coremltools quietly, read and write ``.mlmodel`` specs.

On Linux coremltools logs a warning for every native proxy it cannot load (there is no
Core ML runtime here) and one for the untested TensorFlow version, and its converters
print progress bars. None of it is actionable for a devicetune user, so the first import
and the conversions run inside `quiet`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from devicetune.errors import ArtifactError

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

# The frozen inner product before the softmax through which an iPhone restricts the
# softmax to its classes (server.class_mask): the builder names it, the runtime finds it.
CLASS_OFFSET = "class_offset"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' logging, warnings, stdout and stderr for the block."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def import_coremltools() -> None:
    """Import coremltools (once) without its Linux warnings."""
    with quiet():
        import coremltools  # noqa: F401


def load_spec(model: str | Path | Model_pb2.Model) -> Model_pb2.Model:
    """A spec from a ``.mlmodel`` path (or the spec itself, returned as is).

    Raises:
        ArtifactError: the file is missing or not a Core ML model.
    """
    import_coremltools()
    from coremltools.proto import Model_pb2

    if isinstance(model, Model_pb2.Model):
        return model
    path = Path(model)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such Core ML model") from None
    except Exception:  # protobuf's DecodeError and friends
        raise ArtifactError(f"{path}: not a Core ML model (the protobuf does not parse); "
                            "rebuild it with `devicetune build`") from None
    return spec


def write_spec(spec: Model_pb2.Model, path: str | Path) -> Path:
    """Save a spec as an ``.mlmodel`` file (the protobuf, as Xcode reads it)."""
    path = Path(path)
    path.write_bytes(spec.SerializeToString())
    return path
