"""Which ImageNet concept each of a model's classes is, from WordNet's hierarchy and the training photos.

A backbone trained on ImageNet already tells every dog breed from a wolf; its training photos of a class rarely
show all of them. So a class's concept is found from the training photos, then widened by the hierarchy: the most
specific WordNet synset that holds the ImageNet top-1 answer of at least ``share`` (two thirds) of the class's
training photos. For Kaggle's cats and dogs that is "domestic cat" (5 ImageNet classes) and "dog" (all 118
breeds), whichever breeds the photos show. Classes whose concepts overlap (one inside another, or the same: labels
that are no ImageNet concept, such as "even"/"odd" photos of both) have none, and the open-set detector falls back
on the density score.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

HIERARCHY_FILE = Path(__file__).with_name("imagenet_hierarchy.json")
SHARE = 2 / 3


@dataclass(frozen=True)
class Concept:
    """One class's ImageNet concept: a WordNet synset and the ImageNet-1k classes under it."""

    label: str
    wnid: str
    name: str
    imagenet_classes: tuple[int, ...]
    share: float  # of the class's training photos whose ImageNet top-1 answer lies under it

    def to_dict(self) -> dict:
        return {**asdict(self), "imagenet_classes": len(self.imagenet_classes)}


class Hierarchy:
    """The WordNet hypernyms of the ImageNet-1k classes (``imagenet_hierarchy.json``)."""

    def __init__(self, doc: dict) -> None:
        self.classes: list[str] = doc["classes"]
        self.names = {w: s["name"] for w, s in doc["synsets"].items()}
        parents = {w: s["hypernyms"] for w, s in doc["synsets"].items()}

        def ancestors(w: str, seen: set[str]) -> set[str]:
            for p in parents[w]:
                if p not in seen:
                    seen.add(p)
                    ancestors(p, seen)
            return seen

        # members[synset]: a mask over the 1000 classes of those at or under it
        self.members: dict[str, np.ndarray] = {w: np.zeros(len(self.classes), bool) for w in parents}
        for i, c in enumerate(self.classes):
            for w in ancestors(c, {c}):
                self.members[w][i] = True

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls, path: Path = HIERARCHY_FILE) -> Hierarchy:
        return cls(json.loads(Path(path).read_text()))

    def most_specific(self, top1: np.ndarray, share: float) -> tuple[str, float]:
        """The synset with the fewest ImageNet classes under it that holds at least ``share`` of ``top1``."""
        best: tuple[int, str, float] | None = None
        for w, m in self.members.items():
            held = float(m[top1].mean())
            if held >= share and (best is None or (m.sum(), w) < best[:2]):
                best = (int(m.sum()), w, held)
        assert best is not None  # the root holds every class
        return best[1], best[2]


def find_concepts(top1: np.ndarray, y: np.ndarray, labels: list[str], share: float = SHARE,
                  hierarchy: Hierarchy | None = None) -> list[Concept] | None:
    """Each class's concept from its training photos' ImageNet top-1 answers ``top1`` (labels ``y``), or None
    when two classes' concepts overlap (then they are not distinct ImageNet concepts) or a class has no photos."""
    h = hierarchy or Hierarchy.load()
    if len(h.classes) != 1000 or (len(top1) and top1.max() >= 1000):
        return None
    concepts = []
    for k, label in enumerate(labels):
        if not (y == k).any():
            return None
        wnid, held = h.most_specific(top1[y == k], share)
        concepts.append(Concept(label, wnid, h.names[wnid], tuple(int(i) for i in np.flatnonzero(h.members[wnid])),
                                round(held, 4)))
    for i, a in enumerate(concepts):
        for b in concepts[i + 1:]:
            if set(a.imagenet_classes) & set(b.imagenet_classes):
                return None
    return concepts


def concept_mask(concepts: list[Concept]) -> np.ndarray:
    """Over the 1000 ImageNet classes: 1 where a class lies under one of ``concepts``, else 0."""
    mask = np.zeros(1000)
    for c in concepts:
        mask[list(c.imagenet_classes)] = 1.0
    return mask
