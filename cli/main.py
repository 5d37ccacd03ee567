"""``imgcls``: the project's one command.

    imgcls train|evaluate|list|show|promote|export|retrain ...   the registry and training (python -m training)
    imgcls batch --input DIR|GLOB|LIST.csv --output FILE ...      batch inference (cli/batch.py, imgcls.batch)
    imgcls serve [BENTO] [--host H] [--port P] ...                 the HTTP service (bentoml serve)

``imgcls COMMAND --help`` tells more (``python -m cli`` is the same command). ``batch`` and ``serve`` never import
torch or the training code.
"""
from __future__ import annotations

import os
import sys

TRAINING_COMMANDS = ("train", "evaluate", "list", "show", "promote", "export", "retrain")
SERVICE = "service.service:ImageClassifier"
# Longer than the idle timeouts of common clients (and of BentoML's own client between our two services, 15 s), so
# that the client, not the server, closes an idle connection: otherwise a request sent as the server closes it fails.
KEEP_ALIVE_S = "75"
__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in TRAINING_COMMANDS:
        from training.__main__ import main as training_main

        return training_main([command, *rest], prog="imgcls")
    if command == "batch":
        from cli.batch import main as batch_main

        return batch_main(rest, prog="imgcls batch")
    if command == "serve":
        # bentoml's own CLI, so every option of `bentoml serve` (--host, --port, --reload, ...) passes through;
        # a first argument that is no option names a built Bento (image_classifier:TAG) instead of this checkout.
        target = [] if rest and not rest[0].startswith("-") else [SERVICE]
        defaults = [] if "--timeout-keep-alive" in rest else ["--timeout-keep-alive", KEEP_ALIVE_S]
        cmd = [sys.executable, "-m", "bentoml", "serve", *target, *rest, *defaults]
        # BentoML reports usage to its makers unless told not to (as ONNX Runtime would: imgcls/__init__.py);
        # BENTOML_DO_NOT_TRACK=false in the environment allows it.
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        sys.stdout.flush()
        os.execv(sys.executable, cmd)
    print(f"imgcls: unknown command {command!r}; choose from {', '.join([*TRAINING_COMMANDS, 'batch', 'serve'])}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
