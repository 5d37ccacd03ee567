"""The model side's typed answers survive the two-service topology's process boundary unchanged."""
from __future__ import annotations

import numpy as np

from imgcls.errors import ImgclsError
from service.answers import Explanation, Prediction, StaleInput, from_wire, to_wire


def test_every_kind_of_answer_round_trips() -> None:
    pred = Prediction("v1", "tiny", "fp32", ["a", "b"], np.array([0.25, 0.75]), 0.5, True)
    back = from_wire(to_wire(pred))
    assert type(back) is Prediction and back.labels == ["a", "b"] and back.known is True
    np.testing.assert_array_equal(back.probs, pred.probs)
    expl = from_wire(to_wire(Explanation(**vars(pred), index=1, cam=np.ones((2, 2)))))
    assert type(expl) is Explanation and expl.index == 1 and expl.cam.shape == (2, 2)
    stale = from_wire(to_wire(StaleInput(256, 224)))
    assert isinstance(stale, StaleInput) and (stale.resize_size, stale.input_size) == (256, 224)
    err = from_wire(to_wire(ImgclsError(409, "no_cam", "no map", {"Retry-After": "5"})))
    assert (err.status, err.body(), err.headers) == (409, {"error": "no_cam", "detail": "no map"}, {"Retry-After": "5"})
    assert from_wire(to_wire({"version": "v1"})) == {"version": "v1"}
