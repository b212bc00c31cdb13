"""The jobs API takes Easel's whole request (`request_json`): an edit with its image and mask, as JSON with base64
images or as a multipart form with files, gives the pixels the library gives; a wrong field is a 400 naming it."""

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

import easel
from easel.config import Settings
from easel.server.app import create_app

REQUEST = {"prompt": "a blue square on the right on a yellow background", "model": "builtin", "seed": 3,
           "width": 64, "height": 64, "num_inference_steps": 4, "mode": "edit", "strength": 0.9}


def picture() -> Image.Image:
    return easel.generate("a red circle on the left on a blue background", size="64x64", seed=1, steps=4,
                          save=False)[0].image


def mask() -> Image.Image:
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((32, 0, 63, 63), fill=255)
    return m


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def finished(client: TestClient, job: dict) -> Image.Image:
    for _ in range(600):
        body = client.get(f"/v1/jobs/{job['id']}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert body["status"] == "succeeded", body
    return Image.open(io.BytesIO(client.get(body["urls"][0]).content))


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(home=tmp_path / "server", ui=False), warm=False)) as c:
        yield c


def test_an_edit_as_easels_request_gives_the_librarys_pixels(client):
    expected = easel.edit(picture(), REQUEST["prompt"], mask=mask(), seed=3, steps=4, size="64x64", strength=0.9,
                          save=False)[0]
    inline = {**REQUEST, "image": base64.b64encode(png(picture())).decode(),
              "mask": base64.b64encode(png(mask())).decode()}
    r = client.post("/v1/jobs", json={"request": inline})
    assert r.status_code == 202, r.text
    made = finished(client, r.json())
    assert np.array_equal(np.asarray(made), np.asarray(expected.image))
    as_files = {**REQUEST, "image": "file:image", "mask": "file:mask"}
    r = client.post("/v1/jobs", data={"request": json.dumps(as_files)},
                    files={"image": ("i.png", png(picture()), "image/png"),
                           "mask": ("m.png", png(mask()), "image/png")})
    assert r.status_code == 202, r.text
    assert np.array_equal(np.asarray(finished(client, r.json())), np.asarray(expected.image))


@pytest.mark.parametrize("body, param", [
    ({"request": {**REQUEST, "colour": "red"}}, "colour"),
    ({"request": {**REQUEST, "revised_prompt": "something else"}}, "revised_prompt"),
    ({"request": {**REQUEST, "image": "file:image"}}, "image"),
    ({"request": REQUEST, "model": "builtin"}, "model"),
    ({"request": {**REQUEST, "mode": "generate", "num_inference_steps": 0}}, "num_inference_steps"),
])
def test_a_wrong_request_is_a_400_naming_it(client, body, param):
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
