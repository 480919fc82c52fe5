"""``python -m devicetune`` is the ``devicetune`` command."""

from devicetune.cli import main

main()
