"""Write training/imagenet_hierarchy.json: the WordNet hypernyms of the 1000 ImageNet-1k classes.

    apt-get install wordnet-base && pip download --no-deps timm   # WordNet 3.0; timm ships imagenet_synsets.txt
    python scripts/imagenet_hierarchy.py /usr/share/wordnet imagenet_synsets.txt training/imagenet_hierarchy.json

WordNet's ``data.noun`` is read as its format says (``wndb(5)``): a synset line holds its offset, its words and its
pointers; ``@`` and ``@i`` point at a (instance) hypernym. The file keeps every synset on a path from an ImageNet
class to the root, with its direct hypernyms and its words: ``training.concepts`` reads it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_wordnet_nouns(folder: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(hypernyms, names) of every noun synset in WordNet's ``data.noun``, keyed by wnid (``n`` + offset)."""
    hypernyms, names = {}, {}
    for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        wnid, n_words = "n" + fields[0], int(fields[3], 16)
        names[wnid] = ", ".join(fields[4 + 2 * i].replace("_", " ") for i in range(n_words))
        at = 4 + 2 * n_words
        pointers = fields[at + 1:at + 1 + 4 * int(fields[at])]
        hypernyms[wnid] = ["n" + pointers[j + 1] for j in range(0, len(pointers), 4)
                           if pointers[j] in ("@", "@i") and pointers[j + 2] == "n"]
    return hypernyms, names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wordnet", type=Path, help="WordNet 3.0's dict folder (Debian: /usr/share/wordnet)")
    parser.add_argument("synsets", type=Path, help="the 1000 ImageNet-1k wnids in class-index order")
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    hypernyms, names = read_wordnet_nouns(args.wordnet)
    classes = args.synsets.read_text().split()
    if len(classes) != 1000 or any(c not in hypernyms for c in classes):
        raise SystemExit(f"{args.synsets} is not the 1000 ImageNet-1k wnids of WordNet 3.0")
    keep, todo = set(), list(classes)
    while todo:
        wnid = todo.pop()
        if wnid not in keep:
            keep.add(wnid)
            todo += hypernyms[wnid]
    doc = {"source": "WordNet 3.0 noun hypernyms (Princeton University, Debian package wordnet-base) of the "
                     "ImageNet-1k classes in class-index order (timm's imagenet_synsets.txt); made by "
                     "scripts/imagenet_hierarchy.py",
           "license": "WordNet 3.0 license. Copyright 2006 by Princeton University. All rights reserved. "
                      "https://wordnet.princeton.edu/license-and-commercial-use",
           "classes": classes,
           "synsets": {w: {"name": names[w], "hypernyms": hypernyms[w]} for w in sorted(keep)}}
    args.output.write_text(json.dumps(doc, indent=0, separators=(",", ":")) + "\n")
    print(f"{args.output}: {len(classes)} classes, {len(keep)} synsets")


if __name__ == "__main__":
    main()
