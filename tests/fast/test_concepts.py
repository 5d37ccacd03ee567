"""Classes as ImageNet concepts: the WordNet hierarchy, finding each class's concept from its training photos, and
the open-set detector that accepts every breed of a concept when the training photos showed only some."""
from __future__ import annotations

import numpy as np

from training.concepts import Hierarchy, concept_mask, find_concepts
from training.openset import OpenSetConfig, choose_scores, fit_detector

DOG, DOMESTIC_CAT = "n02084071", "n02121808"


def test_the_hierarchy_holds_imagenet_s_dogs_and_cats() -> None:
    h = Hierarchy.load()
    assert len(h.classes) == 1000 and h.classes[0] == "n01440764"  # tench, ImageNet's class 0
    assert list(np.flatnonzero(h.members[DOG])) == list(range(151, 269))  # the 118 breeds
    assert list(np.flatnonzero(h.members[DOMESTIC_CAT])) == list(range(281, 286))
    assert not h.members[DOG][269:281].any()  # wolves, foxes and wild dogs are canines, not dogs
    assert "dog" in h.names[DOG]


def votes(rng: np.random.Generator, n: int, main: list[int], stray: float) -> np.ndarray:
    """ImageNet top-1 answers: ``main`` classes, and a ``stray`` share anywhere."""
    out = rng.choice(main, n)
    odd = rng.random(n) < stray
    out[odd] = rng.integers(0, 1000, odd.sum())
    return out


def test_a_class_s_concept_is_the_most_specific_synset_holding_two_thirds_of_its_photos() -> None:
    rng = np.random.default_rng(0)
    # The cats look like 3 of the 5 domestic cats, the dogs like 10 breeds of all kinds; a fifth of each anywhere.
    top1 = np.r_[votes(rng, 300, [281, 282, 283], 0.2), votes(rng, 300, list(range(151, 269, 12)), 0.2)]
    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    cat, dog = find_concepts(top1, y, ["cat", "dog"])
    assert (cat.wnid, dog.wnid) == (DOMESTIC_CAT, DOG)  # every domestic cat and every breed
    assert cat.label == "cat" and len(dog.imagenet_classes) == 118 and 0.7 < dog.share < 0.9
    mask = concept_mask([cat, dog])
    assert mask.sum() == 123 and mask[250] == 1 and mask[270] == 0


def test_a_concept_is_only_as_wide_as_what_the_photos_show() -> None:
    """Training dogs that are nearly all toy dogs make the concept "toy dog": a known limit of the rule."""
    rng = np.random.default_rng(3)
    top1 = np.r_[votes(rng, 300, [281, 282], 0.1), votes(rng, 300, list(range(151, 159)), 0.1)]
    _, dog = find_concepts(top1, np.r_[np.zeros(300, int), np.ones(300, int)], ["cat", "dog"])
    assert dog.name.startswith("toy dog") and dog.imagenet_classes == tuple(range(151, 159))


def test_classes_that_share_a_concept_have_none() -> None:
    rng = np.random.default_rng(1)
    both = list(range(151, 161)) + [281, 282]
    top1 = votes(rng, 600, both, 0.1)  # "even" and "odd": cats and dogs in each
    assert find_concepts(top1, rng.integers(0, 2, 600), ["even", "odd"]) is None


def test_auto_scores() -> None:
    assert choose_scores("auto", True, has_concepts=True) == ("imagenet",)
    assert choose_scores("auto", True, has_concepts=False) == ("imagenet", "density")
    assert choose_scores("auto", False) == ("density",)


def test_the_detector_accepts_breeds_the_training_photos_never_showed() -> None:
    """A 1000-class 'ImageNet head' that fires class j on channel j: training dogs show 10 breeds only."""
    rng = np.random.default_rng(2)
    weight, bias = 12.0 * np.eye(1000), np.zeros(1000)

    def photos(classes: np.ndarray) -> np.ndarray:
        return np.abs(np.eye(1000)[classes] + rng.normal(scale=0.05, size=(len(classes), 1000)))

    train_y = np.r_[np.zeros(200, int), np.ones(200, int)]
    seen = np.arange(151, 269, 12)  # 10 breeds of all kinds
    train = photos(np.r_[rng.choice([281, 282], 200), rng.choice(seen, 200)])
    val = photos(np.r_[rng.choice([281, 282], 50), rng.choice(seen, 50)])
    detector, info = fit_detector(train, train_y, val, 2, (weight, bias), OpenSetConfig(), ["cat", "dog"])
    assert info["scores"] == ["imagenet"] and [c["wnid"] for c in info["concepts"]] == [DOMESTIC_CAT, DOG]
    assert "dog" in info["decides"] and info["calibrated_on"] == "val and every training view"
    unseen_breeds = photos(np.setdiff1d(np.arange(151, 269), seen))  # dogs of breeds no training photo showed
    persians = photos(np.full(20, 283))
    wolves, others = photos(np.arange(269, 281)), photos(rng.integers(400, 1000, 100))
    # calibrated to accept 99% of the training photos: about as many of the breeds and cats they never showed
    assert (detector.novelty(unseen_breeds) <= 1).mean() >= 0.95 and (detector.novelty(persians) <= 1).mean() >= 0.95
    assert (detector.novelty(wolves) > 1).all() and (detector.novelty(others) > 1).all()


def test_a_concept_head_exports_to_onnx_and_keeps_its_temperature_and_cam(tmp_path) -> None:
    """The tiny CNN given a made-up 1000-class 'ImageNet classifier': the concept term survives the ONNX export
    (ONNX Runtime matches torch), temperature scaling divides it too, and the CAM weights are its linear part."""
    import onnxruntime as ort
    import torch

    from training.checkpoint import CHECKPOINT_FILE, save_checkpoint
    from training.export import export_onnx
    from training.models import ConceptHead, create_model
    from training.openset import apply_temperature

    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    model = create_model("tiny", 2)
    model.imagenet_head = (rng.normal(size=(1000, 32)).astype(np.float32), np.zeros(1000, np.float32))
    masks = np.zeros((2, 1000), bool)
    masks[0, 281:286], masks[1, 151:269] = True, True
    model.use_concepts(masks)
    assert isinstance(model.head, ConceptHead) and model.linear_head is model.head.linear
    with torch.no_grad():
        model.head.concept_weight.copy_(torch.tensor([0.7, 1.3]))
    x = torch.from_numpy(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    model.eval()
    with torch.inference_mode():
        before = model(x)
        apply_temperature(model, 2.0)
        assert torch.allclose(model(x), before / 2.0, atol=1e-5)
        expected = torch.softmax(model(x), 1).numpy()
    info = export_onnx(model, tmp_path / "model.onnx", x.numpy())
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["probabilities"], {"input": x.numpy()})[0]
    assert info["max_abs_diff_probabilities"] < 1e-4 and np.abs(got - expected).max() < 1e-4
    save_checkpoint(model, tmp_path / CHECKPOINT_FILE, pretrained=False)
    again = create_model("tiny", 2)
    again.imagenet_head = model.imagenet_head
    again.use_concepts(np.zeros((2, 1000), bool))  # what load_model does: buffers come from the checkpoint
    again.load_state_dict(torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True))
    with torch.inference_mode():
        assert torch.allclose(torch.softmax(again.eval()(x), 1), torch.from_numpy(expected), atol=1e-6)
