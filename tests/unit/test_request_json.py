"""A request as JSON has one codec: every field of ImageRequest goes out and comes back as it was (images too),
what an image's parameters keep comes back as the request that made it, and a client's JSON is refused naming
what is wrong."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from easel.control import ControlUnit, IPAdapter
from easel.errors import InvalidRequestError
from easel.request_json import SET_BY_CHECK, from_json, from_record, record, to_json
from easel.types import ImageRequest


def picture(colour, mode="RGB") -> Image.Image:
    return Image.new(mode, (8, 8), colour)


def every_field() -> ImageRequest:
    """A request with every field set to something other than its default."""
    return ImageRequest(
        prompt="a lighthouse", negative_prompt="fog", model="sd15", num_images=3, width=512, height=384,
        size="512x384", aspect="4:3", num_inference_steps=12, guidance_scale=6.5, seed=42, scheduler="euler_a",
        output_format="webp", extra={"offload": "model", "true_cfg_scale": 4.0}, mode="edit",
        image=picture("red"), mask=picture(255, "L"), references=[picture("green"), picture("yellow")],
        strength=0.7, mask_blur=8, inpaint_full_res=True,
        inpaint_full_res_padding=16, moderation="low", loras={"ink": 0.8, "paper": -0.2}, enhance_prompt=True,
        control=[ControlUnit("edges", picture("white"), "canny", 0.8, 0.1, 0.9, 50, 150),
                 ControlUnit("depth", picture("grey"), "invert", 1.2)],
        ip_adapter=IPAdapter("ip-sd15", picture("blue"), 0.4), hires_scale=1.5, hires_size="96x128",
        hires_upscaler="latent", hires_strength=0.4, hires_steps=9, upscaler="4x-ultra", scale=3.0, tile=128,
        enhanced_by="chat", revised_prompt="a tall lighthouse",
        warnings=["ignored: fog"])


def same(a: ImageRequest, b: ImageRequest, skip=()) -> None:
    for field in dataclasses.fields(ImageRequest):
        if field.name in skip:
            continue
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name in ("image", "mask"):
            assert np.array_equal(np.asarray(x), np.asarray(y)), field.name
        elif field.name == "references":
            assert [np.asarray(i).tolist() for i in x] == [np.asarray(i).tolist() for i in y]
        elif field.name == "control":
            assert [(u.record(), np.asarray(u.image).tolist()) for u in x] == \
                   [(u.record(), np.asarray(u.image).tolist()) for u in y]
        elif field.name == "ip_adapter":
            assert x.record() == y.record() and np.array_equal(np.asarray(x.image), np.asarray(y.image))
        else:
            assert x == y, field.name


def test_every_field_round_trips_with_its_images_inline_or_as_files():
    request = every_field()
    defaults = ImageRequest(prompt="x")
    untested = [f.name for f in dataclasses.fields(ImageRequest)
                if f.name != "prompt" and getattr(request, f.name) == getattr(defaults, f.name)]
    assert not untested, f"set these fields in every_field(): {untested}"
    inline, files = to_json(request)
    assert not files
    text = json.dumps({k: v for k, v in inline.items() if k not in SET_BY_CHECK})  # JSON, all of it
    same(from_json(json.loads(text)), request, skip=SET_BY_CHECK)
    by_name, files = to_json(request, images="files")
    assert set(files) == {"image", "mask", "references.0", "references.1", "control.0", "control.1", "ip_adapter"}
    assert by_name["control"][1]["image"] == "file:control.1"
    same(from_json({k: v for k, v in by_name.items() if k not in SET_BY_CHECK}, files), request, skip=SET_BY_CHECK)
    record_only, files = to_json(request, images="none")  # the job record: every field, no image
    assert not files and record_only["image"] is None and record_only["control"][0]["image"] is None
    assert record_only["references"] == []
    assert record_only["revised_prompt"] == "a tall lighthouse" and record_only["warnings"] == ["ignored: fog"]


def test_an_images_record_gives_back_the_request_that_made_it():
    request = every_field().replace(mode="generate", image=None, mask=None, enhanced_by=None, revised_prompt=None)
    params = {**record(request), "model": "sd15", "seed": 42,
              "hires": {"scale": 1.5, "upscaler": "latent", "strength": 0.4, "steps": 9}}
    again = from_record(json.loads(json.dumps(params)))
    keeps = ("prompt", "negative_prompt", "model", "seed", "num_inference_steps", "guidance_scale", "width",
             "height", "scheduler", "output_format", "extra", "loras", "hires_scale", "hires_upscaler",
             "hires_strength", "hires_steps")
    assert {k: getattr(again, k) for k in keeps} == {k: getattr(request, k) for k in keeps}
    assert [u.record() for u in again.control] == [u.record() for u in request.control]
    assert all(u.image is None for u in again.control)  # not kept: the reader names what is missing
    assert again.ip_adapter.record() == request.ip_adapter.record() and again.ip_adapter.image is None
    assert again.enhance_prompt is False
    rewritten = from_record({**params, "prompt_enhancer": "chat", "revised_prompt": "a tall lighthouse"})
    assert rewritten.prompt == "a tall lighthouse"  # what the model received, not asked for again


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "colour": "red"}, "colour"),
    ({"prompt": "x", "revised_prompt": "y"}, "revised_prompt"),  # the check's to set, never a client's
    ({"negative_prompt": "x"}, "prompt"),
    ({"prompt": "x", "image": "not base64!"}, "image"),
    ({"prompt": "x", "image": "file:image"}, "image"),  # no such file sent
    ({"prompt": "x", "control": {"model": "a"}}, "control"),
    ({"prompt": "x", "control": [{"model": "a", "colour": 1}]}, "control"),
    ({"prompt": "x", "ip_adapter": ["a"]}, "ip_adapter"),
    ("a lighthouse", "request"),
])
def test_a_clients_json_is_refused_naming_what_is_wrong(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        from_json(body)
    assert caught.value.param == param
