"""The project's programs, above its libraries: ``imgcls`` (:mod:`cli.main`) and ``imgcls batch`` (:mod:`cli.batch`).

Nothing in ``imgcls/``, ``service/`` or ``training/`` imports this package.
"""
