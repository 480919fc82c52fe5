"""The Android artifact: `DeviceProgram` converted to TFLite with built-in ops only.

The Python LiteRT interpreter has no Flex delegate, and on a phone Flex costs about 8 MB
of APK against 0.56 MB for built-ins (DESIGN.md), so a graph that needs a Select TF op
or a custom op is refused at build time, naming the op.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from devicetune.artifacts.manifest import SignatureEntry, TensorEntry
from devicetune.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from devicetune.model.program import DeviceProgram

TFLITE_FILE = "model.tflite"


def convert_program(program: DeviceProgram, calibration: np.ndarray | None = None) -> bytes:
    """Convert every signature of ``program`` into one TFLite flatbuffer.

    ``calibration`` (example inputs) makes the backbone full-integer int8, calibrated on
    them (``export.quantize = "int8_full"``, see `devicetune.export.quantize`).

    Raises:
        ExportError: the converter fails, or the result needs a non-built-in op.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="devicetune-savedmodel-") as saved:
        tf.saved_model.save(program, saved, signatures=program.signatures())
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        # The head's weights and optimizer state are resource variables the signatures
        # share inside one interpreter.
        converter.experimental_enable_resource_variables = True
        if calibration is not None:
            from devicetune.export.quantize import calibrate_backbone

            calibrate_backbone(converter, calibration)
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and others
            first = " ".join(str(exc).split())[:400]
            raise ExportError(f"TFLite conversion failed: {first}; the backbone or head "
                              "uses an op without a TFLite built-in kernel") from None
    check_builtin_ops(flatbuffer)
    return bytes(flatbuffer)


def operator_names(flatbuffer: bytes) -> list[str]:
    """Operator codes of a TFLite model, read from the flatbuffer: built-in names, or
    ``CUSTOM:<code>`` for custom and Flex ops."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items()
               if not name.startswith("_")}
    names = []
    for i in range(model.OperatorCodesLength()):
        opcode = model.OperatorCodes(i)
        # The schema kept an 8-bit field for old codes; the real code is the larger one.
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            names.append(f"CUSTOM:{(opcode.CustomCode() or b'').decode()}")
        else:
            names.append(builtin.get(code, f"UNKNOWN_{code}"))
    return sorted(set(names))


def check_builtin_ops(flatbuffer: bytes) -> list[str]:
    """The model's operators, if all are TFLite built-ins.

    Raises:
        ExportError: naming every Flex or custom op found.
    """
    names = operator_names(flatbuffer)
    foreign = [n.removeprefix("CUSTOM:") for n in names if n.startswith("CUSTOM:")]
    if foreign:
        flex = [n for n in foreign if n.startswith("Flex")]
        kind = "Flex (Select TF) op" if flex else "custom op"
        raise ExportError(
            f"the TFLite model needs {kind}(s) {', '.join(foreign)}, which the LiteRT "
            "interpreter cannot run without the Flex delegate (about 8 MB of APK); remove "
            "the layer or operation that produces it"
        )
    return names


def signature_table(flatbuffer: bytes) -> dict[str, SignatureEntry]:
    """Every signature with its inputs and outputs (name, shape, dtype); ``-1`` marks a
    dynamic dimension."""
    from ai_edge_litert.interpreter import Interpreter

    from devicetune.device.litert import without_xnnpack_note

    interpreter = Interpreter(model_content=flatbuffer)
    table = {}
    for name in sorted(interpreter.get_signature_list()):
        with without_xnnpack_note():
            runner = interpreter.get_signature_runner(name)
        table[name] = SignatureEntry(
            inputs=_entries(runner.get_input_details()),
            outputs=_entries(runner.get_output_details()),
        )
    return table


def _entries(details: dict[str, dict]) -> list[TensorEntry]:
    import numpy as np

    return [TensorEntry(name=name, shape=[int(d) for d in detail["shape_signature"]],
                        dtype=np.dtype(detail["dtype"]).name)
            for name, detail in sorted(details.items())]


def write_tflite(flatbuffer: bytes, out_dir: Path) -> Path:
    """Write ``out_dir/model.tflite``."""
    path = Path(out_dir) / TFLITE_FILE
    path.write_bytes(flatbuffer)
    return path
