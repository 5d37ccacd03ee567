"""``python -m cli``: the same as the ``imgcls`` command."""
import sys

from cli.main import main

sys.exit(main())
