"""``python -m imgcls``: the same as the ``imgcls`` command."""
import sys

from imgcls.cli import main

sys.exit(main())
