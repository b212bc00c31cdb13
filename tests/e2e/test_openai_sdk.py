"""The official openai SDK against `easel serve` with the built-in model (shared/specs/openai-images.md)."""

import asyncio
import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image
from tiny_pipelines import install_in_hub_cache

FAST = {"num_inference_steps": 4}  # Easel's extension, so that the suite stays quick


def client(server, key="sk-anything"):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png_bytes(size=(64, 64), colour=(40, 80, 220, 255), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour[: len(mode)]).save(buf, format="PNG")
    return buf.getvalue()


def test_models_list_and_get(server):
    c = client(server)
    ids = [m.id for m in c.models.list()]
    assert "builtin" in ids and "dall-e-3" in ids and "gpt-image-1" in ids
    assert c.models.retrieve("builtin").owned_by == "easel"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_generate_png_with_size_and_n(server):
    res = client(server).images.generate(prompt="a large red circle on the left on a blue background", n=3,
                                         size="512x512", extra_body=FAST)
    assert len(res.data) == 3 and res.size == "512x512" and res.output_format == "png"
    im = decode(res.data[0].b64_json)
    assert im.format == "PNG" and im.size == (512, 512)
    assert res.usage.output_tokens > 0 and res.usage.input_tokens_details.text_tokens == 11


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF"), ("png", b"\x89PNG")])
def test_output_formats(server, fmt, magic):
    res = client(server).images.generate(prompt="a red square", output_format=fmt, output_compression=None
                                         if fmt == "png" else 80, model="gpt-image-1", extra_body=FAST)
    assert base64.b64decode(res.data[0].b64_json).startswith(magic)


def test_explicit_none_params_are_defaults(server):
    res = client(server).images.generate(prompt="a green triangle", model=None, n=None, size=None, quality=None,
                                         response_format=None, style=None, user=None, extra_body=FAST)
    assert len(res.data) == 1 and decode(res.data[0].b64_json).size == (256, 256)


def test_openai_model_rules_are_enforced(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="x" * 1001, model="dall-e-2")
    assert info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="a red circle", model="dall-e-3", n=2)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="a red circle", model="dall-e-2", size="1792x1024")
    assert info.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="a red circle", n=0)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="a red circle", size="big")
    assert info.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(prompt="a naked person", model="dall-e-3")
    assert info.value.body["code"] == "content_policy_violation" and "sexual" in info.value.body["message"]
    res = c.images.generate(prompt="a red circle", model="dall-e-3", style="vivid", quality="hd", extra_body=FAST)
    assert res.data[0].revised_prompt.endswith("vivid colors, dramatic lighting")


def test_url_response_is_fetchable_without_auth(auth_server):
    res = client(auth_server, "sk-test-2").images.generate(prompt="a white circle on a black background",
                                                           response_format="url", extra_body=FAST)
    url = res.data[0].url
    assert url.startswith(auth_server.base) and "signature=" in url
    fetched = httpx.get(url)  # no key
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    tampered = url[:-4] + "0000"
    assert httpx.get(tampered).status_code == 404


def test_url_expires_after_an_hour(clocked_server):
    base, clock, _ = clocked_server
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    url = c.images.generate(prompt="a red circle", response_format="url", extra_body=FAST).data[0].url
    clock.now += 59 * 60
    assert httpx.get(url).status_code == 200
    clock.now += 2 * 60
    gone = httpx.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_edit_with_image_image_list_and_bytesio(server):
    c = client(server)
    image = png_bytes()
    mask_buf = io.BytesIO()
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent = repaint
    mask.save(mask_buf, format="PNG")
    one = c.images.edit(image=("scene.png", image, "image/png"), mask=("mask.png", mask_buf.getvalue(), "image/png"),
                        prompt="a red circle on the left on a blue background", extra_body=FAST)
    out = decode(one.data[0].b64_json).convert("RGB")
    assert out.size == (64, 64) and out.getpixel((60, 10)) == (40, 80, 220)  # right half kept
    listed = c.images.edit(image=[("a.png", image, "image/png")], prompt="a red circle", mask=mask_buf.getvalue(),
                           extra_body=FAST)
    assert len(listed.data) == 1
    two = c.images.edit(image=[("a.png", image, "image/png"), ("b.png", png_bytes(), "image/png")],
                        prompt="a red circle", mask=mask_buf.getvalue(), n=2, extra_body=FAST)
    assert len(two.data) == 2
    raw = c.images.edit(image=io.BytesIO(image), prompt="a red circle", mask=io.BytesIO(mask_buf.getvalue()),
                        extra_body=FAST)
    assert decode(raw.data[0].b64_json).size == (64, 64)


def test_edit_with_a_wrong_size_mask(server):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).images.edit(image=png_bytes((64, 64)), mask=png_bytes((32, 32)), prompt="a red circle")
    assert info.value.body["param"] == "mask"


def test_multipart_strings_are_coerced(server):
    r = httpx.post(f"{server.base}/v1/images/edits", files={"image": ("a.png", png_bytes(), "image/png")},
                   data={"prompt": "a red circle", "n": "2", "stream": "false", "num_inference_steps": "3"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    bad = httpx.post(f"{server.base}/v1/images/edits", files={"image": ("a.png", b"not an image", "image/png")},
                     data={"prompt": "a red circle"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "image"


def test_variations(server):
    res = client(server).images.create_variation(image=png_bytes((64, 64), mode="RGB"), n=2, size="256x256",
                                                 extra_body=FAST)
    assert len(res.data) == 2 and decode(res.data[0].b64_json).size == (256, 256)


def test_stream_with_partial_images(server):
    stream = client(server).images.generate(prompt="a blue square at the top on a yellow background", stream=True,
                                            partial_images=2, model="gpt-image-1", extra_body=FAST)
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image", "image_generation.partial_image",
                     "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].usage.total_tokens > 0 and decode(events[-1].b64_json).format == "PNG"


def test_stream_with_no_partials_and_edit_stream(server):
    events = list(client(server).images.generate(prompt="a red circle", stream=True, partial_images=0,
                                                 model="gpt-image-1", extra_body=FAST))
    assert [e.type for e in events] == ["image_generation.completed"]
    edit_events = list(client(server).images.edit(image=png_bytes(), prompt="a red circle", stream=True,
                                                  partial_images=1, model="gpt-image-1", extra_body=FAST))
    assert [e.type for e in edit_events] == ["image_edit.partial_image", "image_edit.completed"]


def test_a_failure_after_the_stream_began_raises(server, hub_cache, tmp_path):
    # a cached hub model whose weights are missing: the request is valid, loading fails once the stream has begun
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    install_in_hub_cache(broken, hub_cache, "easel-test/broken")
    stream = client(server).images.generate(prompt="a red circle", model="easel-test/broken", stream=True,
                                            size="64x64")
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "easel-test/broken could not be loaded" in str(info.value)


def test_an_uncached_hub_model_is_refused_before_anything_queues(server):
    with pytest.raises(openai.NotFoundError) as info:
        client(server).images.generate(prompt="a red circle", model="easel-test/not-cached", stream=True)
    assert "easel models pull easel-test/not-cached" in str(info.value)


def test_request_id_on_success_and_error(server):
    raw = client(server).images.with_raw_response.generate(prompt="a red circle", extra_body=FAST)
    assert raw.headers["x-request-id"]
    r = httpx.post(f"{server.base}/v1/images/generations", json={"prompt": ""})
    assert r.status_code == 400 and r.headers["x-request-id"]
    assert set(r.json()) == {"error"} and r.json()["error"]["param"] == "prompt"


def test_routes_work_without_the_v1_prefix(server):
    c = openai.OpenAI(base_url=server.base, api_key="x", max_retries=0)
    assert len(c.images.generate(prompt="a red circle", extra_body=FAST).data) == 1


def test_auth(auth_server):
    with pytest.raises(openai.AuthenticationError):
        client(auth_server, "sk-wrong").images.generate(prompt="a red circle")
    assert httpx.get(f"{auth_server.base}/v1/models").status_code == 401
    # /health answers probes without a key, but says no more than whether it works; with a key, everything
    assert httpx.get(f"{auth_server.base}/health").json() == {"status": "ok", "service": "easel"}
    full = httpx.get(f"{auth_server.base}/health", headers={"authorization": "Bearer sk-test-1"}).json()
    assert full["status"] == "ok" and "engine" in full and "memory" in full
    assert len(client(auth_server, "sk-test-1").models.list().data) > 0


def test_async_client(server):
    async def go():
        c = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
        results = await asyncio.gather(*[c.images.generate(prompt=f"a {colour} circle", extra_body=FAST)
                                         for colour in ("red", "green", "blue")])
        with pytest.raises(openai.BadRequestError):
            await c.images.generate(prompt="a red circle", size="10x10")
        return results

    assert all(len(r.data) == 1 for r in asyncio.run(go()))


def test_kdeps_route(server):
    ok = httpx.get(f"{server.base}/api/v1/image_generator", params={"q": "a red circle on a white background"},
                   timeout=120)
    body = ok.json()
    assert ok.status_code == 200 and body["success"] is True and body["errors"] == [{"code": 0, "message": ""}]
    assert body["response"]["data"][0]["file"].startswith("data:image/png;base64,")
    posted = httpx.post(f"{server.base}/api/v1/image_generator", json={"q": "a red circle"}, timeout=120).json()
    assert posted["success"] is True
    failed = httpx.get(f"{server.base}/api/v1/image_generator")
    assert failed.status_code == 400 and failed.json()["success"] is False
    assert "q" in failed.json()["errors"][0]["message"]


def test_openapi_describes_the_routes(server):
    spec = httpx.get(f"{server.base}/openapi.json").json()
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/models",
                 "/api/v1/image_generator", "/health"):
        assert path in spec["paths"], path


def test_every_image_is_in_the_history(server):
    r = client(server).images.generate(prompt="a purple triangle on an orange background", response_format="url",
                                       extra_body=FAST)
    image_id = r.data[0].url.split("/files/")[1].split("/")[0]
    from easel.store import History

    row = History(server.home / "history.db").get(image_id)
    assert row["prompt"] == "a purple triangle on an orange background" and row["steps"] == 4
