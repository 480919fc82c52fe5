from __future__ import annotations

import devicetune.privacy as privacy


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(privacy) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(privacy, name)).__name__ == "module"}
    assert set(privacy.__all__) == public - modules
