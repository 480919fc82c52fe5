from __future__ import annotations

import devicetune
from devicetune import errors


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(devicetune) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(devicetune, name)).__name__ == "module"}
    assert set(devicetune.__all__) == public - modules
    for name in devicetune.__all__:
        assert getattr(devicetune, name) is not None


def test_every_error_is_a_devicetune_error() -> None:
    for name in errors.__all__:
        if name == "DevicetuneWarning":  # the one warning: it stops nothing
            assert issubclass(errors.DevicetuneWarning, UserWarning)
            continue
        assert issubclass(getattr(errors, name), errors.DevicetuneError)
    assert issubclass(errors.ParityError, errors.ExportError)
