"""The request sequences of the chat front ends people point at an image server, as their code makes them, against
`easel serve` (the built-in model): LibreChat's DALL-E tools (the openai SDK), SillyTavern's A1111 source, the
newest openai SDK's parameters; and the queue position and time estimate that every job carries."""

import io
import json
import threading
import time

import httpx
import pytest
from openai import BadRequestError, OpenAI
from PIL import Image


def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base}/v1", api_key="sk-none", max_retries=0)


def test_librechat_dalle_tools_get_urls_and_a_revised_prompt(server):
    """LibreChat's DALL-E 3 tool sends no response_format and reads `data[0].url` (OpenAI's default for DALL-E
    models), and shows `revised_prompt`, which DALL-E 3 always returns."""
    openai = client(server)
    three = openai.images.generate(model="dall-e-3", prompt="a red circle on a blue background", size="1024x1024",
                                   quality="standard", n=1)
    assert three.data[0].b64_json is None and three.data[0].url.startswith(server.base)
    assert three.data[0].revised_prompt == "a red circle on a blue background"
    picture = Image.open(io.BytesIO(httpx.get(three.data[0].url).content))
    assert picture.size == (1024, 1024)
    vivid = openai.images.generate(model="dall-e-3", prompt="a red circle", style="vivid")
    assert vivid.data[0].revised_prompt.startswith("a red circle,")  # the style's words, as drawn
    two = openai.images.generate(model="dall-e-2", prompt="a green square", size="256x256")
    assert two.data[0].url and two.data[0].revised_prompt is None
    for model in ("gpt-image-1", "builtin"):  # base64 stays the default for every other name
        answer = openai.images.generate(model=model, prompt="a green square", size="256x256")
        assert answer.data[0].b64_json and answer.data[0].url is None
    asked = openai.images.generate(model="dall-e-3", prompt="a red circle", response_format="b64_json")
    assert asked.data[0].b64_json and asked.data[0].revised_prompt == "a red circle"


def test_the_newest_openai_sdk_parameters_are_taken_or_refused_by_name(server):
    """openai 3.6x's images parameters: `safety_identifier`, `complexity` and `quality` xhigh/max are taken; GIF and
    SVG output (`frame_count`, `frame_duration_ms`, `svg`, `output_format` gif or svg) are refused, each by name."""
    openai = client(server)
    made = openai.images.generate(model="builtin", prompt="a yellow triangle", size="256x256", quality="xhigh",
                                  complexity="low", safety_identifier="user-1234")
    assert made.data[0].b64_json and made.quality == "xhigh"
    refusals = {"frame_count": {"frame_count": 4, "output_format": "png"}, "frame_duration_ms": {
        "frame_duration_ms": 100}, "svg": {"svg": {"model": "x"}}, "output_format": {"output_format": "gif"}}
    for param, fields in refusals.items():
        with pytest.raises(BadRequestError) as refused:
            openai.images.generate(model="builtin", prompt="a yellow triangle", size="256x256", **fields)
        assert refused.value.body["param"] == param, refused.value.body
    with pytest.raises(BadRequestError) as refused:
        openai.images.generate(model="builtin", prompt="x", size="256x256", extra_body={"frames": 3})
    assert refused.value.body["param"] == "frames"


def _png(colour, mode="RGB", size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def test_markup_is_drawn_over_the_image_and_refused_with_a_mask(server):
    """`markup` (a transparent PNG of marks over the first image) guides an edit; it needs transparent pixels, the
    image's size, and no mask."""
    openai = client(server)
    marks = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    marks.paste((255, 0, 0, 255), (20, 20, 40, 40))
    buf = io.BytesIO()
    marks.save(buf, format="PNG")
    made = openai.images.edit(model="builtin", image=("a.png", _png("white")), markup=("m.png", buf.getvalue()),
                              prompt="a red square")
    assert made.data[0].b64_json
    cases = {"markup": dict(markup=("m.png", _png("red"))),  # no transparent pixel
             "mask": dict(markup=("m.png", buf.getvalue()), mask=("k.png", _png((0, 0, 0, 0), "RGBA")))}
    for param, files in cases.items():
        with pytest.raises(BadRequestError) as refused:
            openai.images.edit(model="builtin", image=("a.png", _png("white")), prompt="x", **files)
        assert refused.value.body["param"] == "markup", (param, refused.value.body)


def test_sillytavern_waits_for_an_idle_progress_after_a_model_switch(server):
    """After `POST /options` SillyTavern polls `/progress` until `progress == 0` and `job_count == 0`: an idle
    server says so at once, also after a task finished (a finished task is not current any more); the finished
    task itself still reads done by its id."""
    base = server.base
    assert httpx.post(f"{base}/sdapi/v1/options", json={"sd_model_checkpoint": "builtin"}).status_code == 200
    idle = httpx.get(f"{base}/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    made = httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "a blue square", "width": 64, "height": 64,
                                                        "steps": 4, "force_task_id": "task(st-1)"}, timeout=120)
    assert made.status_code == 200
    after = httpx.get(f"{base}/sdapi/v1/progress").json()
    assert after["progress"] == 0 and after["state"]["job_count"] == 0
    done = httpx.get(f"{base}/sdapi/v1/progress", params={"id_task": "task(st-1)"}).json()
    assert done["progress"] == 1.0 and done["eta_relative"] == 0.0


def test_queued_jobs_know_their_place_and_when_they_will_finish(server):
    """Three jobs that cannot share a batch (three sizes): the later ones wait with `queue_position` (0: next) and
    an `eta_s` from the running job's pace; a follower of the last hears its place move up, then its progress."""
    base = server.base
    jobs = [httpx.post(f"{base}/v1/jobs", json={"prompt": "a grey circle", "model": "builtin", "size": size,
                                                "num_inference_steps": 120}).json()
            for size in ("64x64", "72x72", "80x80")]
    last = jobs[-1]["id"]
    events = []

    def follow():
        with httpx.stream("GET", f"{base}/v1/jobs/{last}/events", params={"previews": "false"},
                          timeout=300) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    seen, deadline = {}, time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.get(f"{base}/v1/jobs/{last}").json()
        if body["status"] == "queued" and body["eta_s"] is not None:
            seen = body
            break
        time.sleep(0.05)
    assert seen["queue_position"] in (0, 1) and seen["eta_s"] > 0, seen
    progress = httpx.get(f"{base}/sdapi/v1/progress").json()  # A1111's view has no task of this API: idle
    assert progress["state"]["job_count"] == 0
    reader.join(300)
    assert events[-1]["status"] == "succeeded"
    places = [e["queue_position"] for e in events if e["status"] == "queued"]
    assert places and places[-1] == 0 and places == sorted(places, reverse=True), places
    running = [e for e in events if e["status"] == "running"]
    assert running and all(e["queue_position"] is None and e["eta_s"] is not None for e in running[1:])


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to its first `failures` calls, then 200."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, []

    def app(self):
        from fastapi import FastAPI, Request, Response

        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            self.calls.append((dict(request.headers), await request.body()))
            return Response(status_code=500 if len(self.calls) <= self.failures else 200)

        @app.get("/health")
        def health():
            return {}

        return app


def test_a_webhook_hears_the_jobs_end_signed_and_retried(easel_home, monkeypatch):
    """A job that names a webhook: its final JSON (with its images' links) is POSTed there, signed with the
    server's webhook secret, tried again after the receiver's 500s, and each attempt is in the job's record. A URL
    on a private address is refused unless the operator allows them."""
    import hashlib
    import hmac

    from servers import serving

    from easel.config import Settings
    from easel.server.app import create_app

    receiver = Receiver(failures=2)
    with serving(receiver.app()) as hook_base:
        refused = create_app(Settings(home=easel_home / "strict", ui=False), warm=False)
        with serving(refused) as base:
            answer = httpx.post(f"{base}/v1/jobs", json={"prompt": "a red circle", "model": "builtin",
                                                        "webhook": f"{hook_base}/hook"})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "webhook"
            assert "not a public address" in answer.json()["error"]["message"]
            bad = httpx.post(f"{base}/v1/jobs", json={"prompt": "x", "webhook": "ftp://example.com/x"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "webhook"
        settings = Settings(home=easel_home, ui=False, webhook_allow_private=True, webhook_secret="s3cret")
        app = create_app(settings, warm=False)
        app.state.webhooks.first_pause_s = 0.1
        with serving(app) as base:
            job = httpx.post(f"{base}/v1/jobs", json={"prompt": "a red circle", "model": "builtin",
                                                     "size": "64x64", "webhook": f"{hook_base}/hook"}).json()
            assert job["webhook"] == {"url": f"{hook_base}/hook", "status": "pending", "attempts": 0}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = httpx.get(f"{base}/v1/jobs/{job['id']}").json()
                if body.get("webhook", {}).get("status") == "delivered":
                    break
                time.sleep(0.1)
            assert body["webhook"]["attempts"] == 3 and body["webhook"]["last_status"] == 200, body
            # the OpenAI route takes it as an extension field (the SDK's extra_body)
            made = OpenAI(base_url=f"{base}/v1", api_key="x").images.generate(
                model="builtin", prompt="a blue square", size="64x64", extra_body={"webhook": f"{hook_base}/hook"})
            assert made.data[0].b64_json
            while time.monotonic() < deadline and len(receiver.calls) < 4:
                time.sleep(0.1)
    assert len(receiver.calls) == 4
    headers, sent = receiver.calls[2]
    expected = hmac.new(b"s3cret", headers["x-easel-timestamp"].encode() + b"." + sent, hashlib.sha256).hexdigest()
    assert headers["x-easel-signature"] == f"sha256={expected}" and headers["x-easel-job"] == job["id"]
    final = json.loads(sent)
    assert final["status"] == "succeeded" and final["urls"][0].startswith(base)
    assert receiver.calls[0][1] == sent  # every attempt sends the same body


def test_a_streamed_answer_says_its_warnings_as_the_plain_one_does(server):
    """A prompt enhancement asked for in vain is said in the plain answer's `warnings`, and in the streamed
    answer's completed event too."""
    openai = client(server)
    plain = openai.images.generate(model="builtin", prompt="a red circle", size="64x64",
                                   extra_body={"enhance_prompt": True})
    said = plain.model_extra["warnings"]
    assert any("used as written" in w for w in said)
    events = list(openai.images.generate(model="gpt-image-1", prompt="a red circle", size="1024x1024", stream=True,
                                         extra_body={"enhance_prompt": True}))
    assert events[-1].type == "image_generation.completed" and events[-1].model_extra["warnings"] == said
