"""The endpoints' file parameter keeps the upload in memory and still reads, to BentoML and its client, as a file."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from service.upload_file import UploadedFile

ADAPTER = TypeAdapter(UploadedFile)


def test_an_upload_is_taken_as_bytes_with_its_name(tmp_path: Path) -> None:
    form_file = UploadFile(io.BytesIO(b"\xff\xd8 jpeg bytes"), filename="../cat.jpg")
    upload = ADAPTER.validate_python(form_file)
    assert (upload.name, upload.read_bytes()) == ("cat.jpg", b"\xff\xd8 jpeg bytes")
    assert ADAPTER.validate_python(b"raw").read_bytes() == b"raw"
    local = tmp_path / "dog.png"
    local.write_bytes(b"png bytes")
    assert (ADAPTER.validate_python(local).name, ADAPTER.validate_python(local).read_bytes()) == ("dog.png",
                                                                                                 b"png bytes")
    with pytest.raises(ValidationError, match="expected an uploaded file"):
        ADAPTER.validate_python(42)


def test_bentoml_takes_it_as_a_multipart_file_field() -> None:
    """What BentoML's client and docs page read: a file field, as BentoML's own Path type gives."""
    from service.service import ImageClassifier

    for api, field in (("classify", "image"), ("explain", "image"), ("feedback", "image"),
                       ("classify_batch", "images")):
        spec = ImageClassifier.apis[api].input_spec
        assert spec.multipart_fields == [field]
        schema = spec.model_json_schema()["properties"][field]
        assert (schema.get("items") or schema) == {"type": "file", "format": "binary"} | (
            {} if "items" in schema else {"title": field.title()})


def test_the_no_model_server_measures_the_services_own_endpoint_shape() -> None:
    """bench/http_floor.py's 'service path, no model' must take what /classify takes, the way /classify takes it."""
    from bench.peers.no_model import ServicePathNoModel
    from service.service import ImageClassifier

    def shape(svc) -> dict:
        return svc.apis["classify"].input_spec.model_json_schema()

    assert shape(ServicePathNoModel) == shape(ImageClassifier)
