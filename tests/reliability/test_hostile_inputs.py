"""Hostile and malformed requests on every route and front: each is answered with its front's error shape, the
right status and the parameter it names, never a 5xx and never a traceback."""

import base64
import io
import json

import httpx
import pytest
from PIL import Image


def png(size=(64, 64), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def raw(body: str) -> dict:
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


GEN = "/v1/images/generations"
SURROGATE = '"\\ud800"'  # a lone surrogate: valid JSON, not valid Unicode
NINES = "9" * 5000

# (case, method, path, request options, expected status, expected param or None)
CASES = [
    ("link expiry of 5000 nines", "GET", f"/v1/files/abc/content?expires={NINES}&signature=x", {}, 404, None),
    ("link expiry in superscript digits", "GET", "/v1/files/abc/content?expires=%C2%B2&signature=x", {}, 404, None),
    ("link expiry negative", "GET", "/v1/files/abc/content?expires=-1&signature=x", {}, 404, None),
    ("link signature not ASCII", "GET", "/v1/files/abc/content?expires=99999999999&signature=%C3%A9", {}, 404,
     None),
    ("link id with a traversal", "GET", "/v1/files/..%2F..%2Fetc%2Fpasswd/content?expires=1&signature=x", {}, 404,
     None),
    ("prompt: lone surrogate", "POST", GEN, raw('{"prompt": %s}' % SURROGATE), 400, "prompt"),
    ("negative prompt: lone surrogate", "POST", GEN, raw('{"prompt": "a", "negative_prompt": %s}' % SURROGATE),
     400, "negative_prompt"),
    ("jobs: lone surrogate", "POST", "/v1/jobs", raw('{"prompt": %s}' % SURROGATE), 400, "prompt"),
    ("kdeps: lone surrogate", "POST", "/api/v1/image_generator", raw('{"q": %s}' % SURROGATE), 400, None),
    ("kdeps: q not a string", "POST", "/api/v1/image_generator", {"json": {"q": 5}}, 400, None),
    ("kdeps: no prompt", "GET", "/api/v1/image_generator", {}, 400, None),
    ("HF: lone surrogate", "POST", "/models/builtin", raw('{"inputs": %s}' % SURROGATE), 400, "prompt"),
    ("A1111: lone surrogate", "POST", "/sdapi/v1/txt2img", raw('{"prompt": %s}' % SURROGATE), 400, "prompt"),
    ("model with a $", "POST", GEN, {"json": {"prompt": "a", "model": "org/na$me"}}, 404, "model"),
    ("model in the home folder", "POST", GEN, {"json": {"prompt": "a", "model": "~/x"}}, 404, "model"),
    ("model an absolute path", "POST", GEN, {"json": {"prompt": "a", "model": "/etc"}}, 404, "model"),
    ("model a relative traversal", "POST", GEN, {"json": {"prompt": "a", "model": "../../etc"}}, 404, "model"),
    ("model with a NUL", "POST", GEN, {"json": {"prompt": "a", "model": "a\u0000/b"}}, 404, "model"),
    ("model a number", "POST", GEN, {"json": {"prompt": "a", "model": 5}}, 400, "model"),
    ("model a surrogate", "POST", GEN, raw('{"prompt": "a", "model": %s}' % SURROGATE), 404, "model"),
    ("HF route: model with a $", "POST", "/models/org/na$me", {"json": {"inputs": "a"}}, 404, None),
    ("HF route: model an absolute path", "POST", "/models/%2Fetc", {"json": {"inputs": "a"}}, 404, None),
    ("HF route: unknown parameter", "POST", "/models/builtin", {"json": {"inputs": "a", "parameters": {"x": 1}}},
     400, None),
    ("HF route: body not JSON", "POST", "/models/builtin", {"content": b"\xff\xfe"}, 400, None),
    ("A1111: checkpoint a number", "POST", "/sdapi/v1/txt2img",
     {"json": {"prompt": "a", "override_settings": {"sd_model_checkpoint": 5}}}, 400,
     "override_settings.sd_model_checkpoint"),
    ("A1111: checkpoint a path", "POST", "/sdapi/v1/txt2img",
     {"json": {"prompt": "a", "override_settings": {"sd_model_checkpoint": "/etc"}}}, 404,
     "override_settings.sd_model_checkpoint"),
    ("A1111: options checkpoint a number", "POST", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": 5}}, 400,
     "sd_model_checkpoint"),
    ("A1111: options checkpoint a path", "POST", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": "~/m"}},
     404, "sd_model_checkpoint"),
    ("A1111: interrupt a dict", "POST", "/sdapi/v1/interrupt", {"json": {"id_task": {}}}, 400, "id_task"),
    ("A1111: interrupt a list", "POST", "/sdapi/v1/interrupt", {"json": {"id_task": [1]}}, 400, "id_task"),
    ("A1111: interrupt unknown task", "POST", "/sdapi/v1/interrupt", {"json": {"id_task": "nope"}}, 404,
     "id_task"),
    ("A1111: progress of unknown task", "GET", "/sdapi/v1/progress?id_task=nope", {}, 404, "id_task"),
    ("A1111: sampler unknown", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "a", "sampler_name": "Nope"}}, 400,
     "sampler_name"),
    ("A1111: batch size 0", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "a", "batch_size": 0}}, 400,
     "batch_size"),
    ("A1111: width negative", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "a", "width": -64}}, 400, "width"),
    ("A1111: steps 0, named as A1111 names it", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "a", "steps": 0}},
     400, "steps"),
    ("A1111: cfg_scale 99", "POST", "/sdapi/v1/txt2img", {"json": {"prompt": "a", "cfg_scale": 99}}, 400,
     "cfg_scale"),
    ("A1111: img2img strength 0", "POST", "/sdapi/v1/img2img", {"json": {
        "prompt": "a", "init_images": [base64.b64encode(png()).decode()], "denoising_strength": 0}}, 400,
     "denoising_strength"),
    ("A1111: img2img without images", "POST", "/sdapi/v1/img2img", {"json": {"prompt": "a"}}, 400, "init_images"),
    ("A1111: img2img not base64", "POST", "/sdapi/v1/img2img", {"json": {"prompt": "a", "init_images": ["%%"]}},
     400, "init_images"),
    ("A1111: img2img base64 of text", "POST", "/sdapi/v1/img2img",
     {"json": {"prompt": "a", "init_images": [base64.b64encode(b"hello").decode()]}}, 400, "init_images"),
    ("n negative", "POST", GEN, {"json": {"prompt": "a", "n": -1}}, 400, "n"),
    ("n huge", "POST", GEN, {"json": {"prompt": "a", "n": 10**12}}, 400, "n"),
    ("n a float", "POST", GEN, {"json": {"prompt": "a", "n": 1.5}}, 400, "n"),
    ("size huge", "POST", GEN, {"json": {"prompt": "a", "size": "99999x99999"}}, 400, "size"),
    ("size junk", "POST", GEN, {"json": {"prompt": "a", "size": "axb"}}, 400, "size"),
    ("size digits in another script", "POST", GEN, {"json": {"prompt": "a", "size": "\u0665\u0661\u0662x512"}},
     400, "size"),
    ("steps huge", "POST", GEN, {"json": {"prompt": "a", "num_inference_steps": 10**9}}, 400,
     "num_inference_steps"),
    ("seed negative", "POST", GEN, {"json": {"prompt": "a", "seed": -5}}, 400, "seed"),
    ("seed over 2**63", "POST", GEN, {"json": {"prompt": "a", "seed": 2**70}}, 400, "seed"),
    ("guidance NaN", "POST", GEN, raw('{"prompt": "a", "guidance_scale": NaN}'), 400, "guidance_scale"),
    ("guidance Infinity", "POST", GEN, raw('{"prompt": "a", "guidance_scale": Infinity}'), 400, "guidance_scale"),
    ("prompt of 100,000 characters", "POST", GEN, {"json": {"prompt": "a" * 100_000}}, 400, "prompt"),
    ("prompt a list", "POST", GEN, {"json": {"prompt": ["a"]}}, 400, "prompt"),
    ("prompt empty", "POST", GEN, {"json": {"prompt": "   "}}, 400, "prompt"),
    ("prompt missing", "POST", GEN, {"json": {}}, 400, "prompt"),
    ("body not JSON", "POST", GEN, raw("not json"), 400, None),
    ("body a JSON array", "POST", GEN, raw("[1, 2]"), 400, None),
    ("body nested 100,000 deep", "POST", GEN, raw('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400,
     None),
    ("unknown parameter", "POST", GEN, {"json": {"prompt": "a", "colour": "red"}}, 400, "colour"),
    ("output compression 1000", "POST", GEN, {"json": {"prompt": "a", "output_format": "jpeg",
                                                        "output_compression": 1000}}, 400, "output_compression"),
    ("partial images 99", "POST", GEN, {"json": {"prompt": "a", "stream": True, "partial_images": 99}}, 400,
     "partial_images"),
    ("response format unknown", "POST", GEN, {"json": {"prompt": "a", "response_format": "file"}}, 400,
     "response_format"),
    ("dall-e-3 with n=2", "POST", GEN, {"json": {"prompt": "a", "model": "dall-e-3", "n": 2}}, 400, "n"),
    ("job id with a traversal", "GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd", {}, 404, None),
    ("job id unknown", "GET", "/v1/jobs/job_nope", {}, 404, "job_id"),
    ("job list limit negative", "GET", "/v1/jobs?limit=-1", {}, 400, "limit"),
    ("job list limit not a number", "GET", "/v1/jobs?limit=%C2%B2", {}, 400, "limit"),
    ("cancel an unknown job", "DELETE", "/v1/jobs/nope", {}, 404, "job_id"),
    ("events of an unknown job", "GET", "/v1/jobs/nope/events", {}, 404, "job_id"),
    ("edit: image not an image", "POST", "/v1/images/edits",
     {"files": {"image": ("a.png", b"not an image", "image/png")}, "data": {"prompt": "a"}}, 400, "image"),
    ("edit: no image", "POST", "/v1/images/edits", {"files": {"x": ("a", b"", "text/plain")},
                                                      "data": {"prompt": "a"}}, 400, "x"),
    ("edit: mask of another size", "POST", "/v1/images/edits",
     {"files": {"image": ("a.png", png((64, 64), "RGBA"), "image/png"),
                "mask": ("m.png", png((32, 32), "RGBA"), "image/png")}, "data": {"prompt": "a"}}, 400, "mask"),
    ("edit: n not a number", "POST", "/v1/images/edits",
     {"files": {"image": ("a.png", png(), "image/png")}, "data": {"prompt": "a", "n": "many"}}, 400, "n"),
    ("edit: options not JSON", "POST", "/v1/images/edits",
     {"files": {"image": ("a.png", png(), "image/png")}, "data": {"prompt": "a", "options": "{steps: 2"}}, 400,
     "options"),
    ("variation: options a JSON list", "POST", "/v1/images/variations",
     {"files": {"image": ("a.png", png(), "image/png")}, "data": {"options": "[1, 2]"}}, 400, "options"),
    ("variation: an unknown model option", "POST", "/v1/images/variations",
     {"files": {"image": ("a.png", png(), "image/png")}, "data": {"options": '{"bogus": 1}'}}, 400, "bogus"),
    ("generation: options a number", "POST", GEN, {"json": {"prompt": "a", "options": 3}}, 400, "options"),
    ("variation: decompression bomb", "POST", "/v1/images/variations",
     {"files": {"image": ("a.png", png((5000, 5000), "L"), "image/png")}}, 400, "image"),
    ("variation: truncated PNG", "POST", "/v1/images/variations",
     {"files": {"image": ("a.png", png()[:60], "image/png")}}, 400, "image"),
    ("unknown route", "GET", "/v1/nothing-here", {}, 404, None),
    ("wrong method", "PUT", GEN, {"json": {"prompt": "a"}}, 405, None),
]


@pytest.mark.parametrize("case,method,path,options,status,param", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(fast_server, case, method, path, options, status, param):
    base, _ = fast_server
    r = httpx.request(method, base + path, timeout=30, **options)
    assert r.status_code == status, (case, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    if path.startswith("/api/v1/image_generator"):
        assert body["success"] is False and body["errors"][0]["message"]
    elif path.startswith("/models/"):
        assert body["error"] and (param is None or body.get("param") == param)
    else:
        assert body["error"]["message"], body
        if param is not None:
            assert body["error"]["param"] == param, (case, body)


def test_a_hostile_request_id_is_replaced(fast_server):
    base, _ = fast_server
    r = httpx.get(f"{base}/health", headers={"x-request-id": "x" * 500})
    assert r.headers["x-request-id"].startswith("req_")
    r = httpx.get(f"{base}/health", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


def test_the_server_still_works_after_the_hostile_requests(fast_server):
    base, app = fast_server
    r = httpx.post(f"{base}{GEN}", json={"prompt": "a red circle", "size": "64x64"}, timeout=30)
    assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
    assert app.state.engine.worker_alive
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok" and health["engine"]["last_error"] is None, json.dumps(health)
