"""The web UI in a real browser: headless Debian Chromium driven by Playwright, against `easel serve` with the
built-in model and API keys on (the UI's login page takes a key), plus its API through `gradio_client`.

Screenshots of each tab go to $EASEL_SCREENSHOTS (docs/screenshots/ for the README) or to a temporary folder."""

import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servers import running_server

CHROMIUM = Path("/usr/bin/chromium")
KEY = "sk-ui-test"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                "(.ci/run installs it: apt-get install chromium)")


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("ui-home")
    (home / "loras").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(home / "loras" / "watercolor.safetensors"))
    (home / "ip_adapters" / "faces" / "image_encoder").mkdir(parents=True)  # listed by its folder's layout
    (home / "ip_adapters" / "faces" / "image_encoder" / "config.json").write_text("{}")
    with running_server(home, keys=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EASEL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(ui_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 960})
        page.set_default_timeout(90_000)
        page.missing = []  # every resource the browser asked for and did not get (checked by the last test)
        page.on("response", lambda r: page.missing.append(r.url) if r.status == 404 else None)
        # Chrome's own line for a resource that answered 404 (not any "404": a WebGL context's address is random hex)
        page.on("console", lambda m: page.missing.append(m.location.get("url"))
                if re.search(r"status of 404\b", m.text) else None)
        page.goto(f"{ui_server.base}/ui/")
        # keys are on: the UI asks for one (any name, the key as password)
        page.get_by_label("username").fill("me")
        page.get_by_label("password").fill(KEY)
        page.get_by_role("button", name="Login").click()
        page.locator("#prompt textarea").wait_for()
        yield page
        browser.close()


def history(server) -> list[dict]:
    conn = sqlite3.connect(server.home / "history.db")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM generations ORDER BY created DESC, rowid DESC")]


def shown_json(page, selector: str) -> dict:
    """The JSON a component shows, once settled: selecting an image refreshes it, and meanwhile Gradio's timer
    ("0.0s") stands in its text."""
    page.wait_for_function("""selector => {
        const text = document.querySelector(selector).innerText.split("\\n").slice(1).join("");
        try { JSON.parse(text); return true } catch (e) { return false }
    }""", arg=selector)
    return json.loads(page.locator(selector).inner_text().split("\n", 1)[1].replace("\n", ""))


def toast(page) -> str:
    page.locator(".toast-body").first.wait_for()
    return " ".join(page.locator(".toast-body").all_inner_texts())


def close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()


def test_the_ui_refuses_a_wrong_key(ui_server):
    import httpx

    assert httpx.get(f"{ui_server.base}/ui/config").status_code == 401
    r = httpx.post(f"{ui_server.base}/ui/login", data={"username": "me", "password": "wrong"})
    assert r.status_code == 400
    assert httpx.get(f"{ui_server.base}/v1/models").status_code == 401, "the API still wants its Bearer key"


def test_generate_shows_progress_previews_then_the_image_and_its_metadata(page, ui_server, shots):
    prompt = "a large red circle on the left on a blue background"
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#width input").fill("256")
    page.locator("#height input").fill("256")
    page.locator("#steps input[type=number]").fill("40")
    page.locator("#seed input").fill("7")
    # the bar may show for less time than a locator polls on a busy machine: the page itself notes that it showed
    page.evaluate("""() => {
        window.barShown = false;
        new MutationObserver(() => {
            const bar = document.querySelector("#metadata .progress-text");
            if (bar && /\\d+\\/40 steps/.test(bar.innerText)) window.barShown = true;
        }).observe(document.body, {childList: true, subtree: true, characterData: true});
    }""")
    page.locator("#generate").click()
    page.locator("#status").get_by_text(re.compile(r"Step \d+ of 40")).wait_for()  # live progress
    page.locator("#gallery img").first.wait_for()  # previews appear while it denoises
    page.locator("#status").get_by_text("Done").wait_for(timeout=240_000)  # a step a second on a busy machine
    assert page.evaluate("window.barShown"), "a progress bar showed the steps"
    page.locator("#gallery img").first.click()
    meta = shown_json(page, "#metadata")
    # the enlarged image hides the grid behind it (no faded copy of the thumbnail around it)
    assert page.evaluate("getComputedStyle(document.querySelector('#gallery .preview')).backgroundColor") \
        not in ("rgba(0, 0, 0, 0)", "transparent")
    assert meta["prompt"] == prompt and meta["seed"] == 7 and meta["num_inference_steps"] == 40
    row = history(ui_server)[0]
    assert row["id"] == meta["id"] and row["width"] == 256 and row["seed"] == 7
    page.screenshot(path=str(shots / "generate.png"), full_page=True)

    page.locator("#seed input").fill("-1")
    page.locator("#reuse-seed").click()
    page.wait_for_function("document.querySelector('#seed input').value === '7'")


def test_prompt_help_builds_the_prompt_and_shows_what_is_sent(page, shots):
    page.locator("#prompt-help").get_by_text("Prompt help").click()
    page.locator("#subject textarea, #subject input").first.fill("a small yellow triangle")
    page.locator("#build-prompt").click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('a small yellow triangle')")
    page.wait_for_function("document.querySelector('#final-prompt textarea, #final-prompt input').value"
                           ".startsWith('a small yellow triangle')")
    page.screenshot(path=str(shots / "prompt-help.png"), full_page=True)
    page.locator("#prompt-help").get_by_text("Prompt help").click()


def test_the_lora_picker_writes_a_tag_with_its_weight(page):
    prompt = page.locator("#prompt textarea")
    prompt.fill("a lighthouse")
    page.locator("#lora input").click()
    page.get_by_role("option", name="watercolor").click()
    weight = page.locator("#lora-weight input[type=number]")
    weight.fill("0.6")
    weight.press("Enter")
    page.locator("#add-lora").click()
    page.wait_for_function("document.querySelector('#prompt textarea').value === 'a lighthouse <lora:watercolor:0.6>'")
    weight.fill("1.2")
    weight.press("Enter")
    page.locator("#add-lora").click()  # the same LoRA again: its weight changes, no second tag
    page.wait_for_function("document.querySelector('#prompt textarea').value === 'a lighthouse <lora:watercolor:1.2>'")
    prompt.press("End")
    prompt.type(" ")  # what is sent follows the prompt: the built-in model takes no LoRA, and says so
    page.wait_for_function("document.querySelector('#final-prompt textarea, #final-prompt input').value"
                           ".includes('does not take LoRAs (watercolor)')")
    prompt.fill("")


def test_the_controlnet_panel_previews_the_map(page, tmp_path, shots):
    from PIL import ImageDraw

    picture = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(picture).ellipse([20, 20, 76, 76], outline="black", width=4)
    picture.save(tmp_path / "shape.png")
    page.locator("#controlnet").get_by_text("ControlNet").first.click()
    page.locator("#control-image input[type=file]").set_input_files(str(tmp_path / "shape.png"))
    page.locator("#control-image img").first.wait_for()
    page.locator("#control-preview").click()
    page.locator("#control-map img").first.wait_for()
    page.screenshot(path=str(shots / "controlnet.png"), full_page=True)
    page.locator("#controlnet").get_by_text("ControlNet").first.click()


def test_the_image_prompt_panel_sends_an_ip_adapter(page, tmp_path):
    Image.new("RGB", (64, 64), "orange").save(tmp_path / "look.png")
    page.locator("#image-prompt").get_by_text("Image prompt (IP-Adapter)").first.click()
    page.locator("#ip-image input[type=file]").set_input_files(str(tmp_path / "look.png"))
    page.locator("#ip-image img").first.wait_for()
    page.locator("#ip-model input").click()
    page.get_by_role("option", name="faces").click()
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#generate").click()  # the built-in model takes no image prompt: it says so, naming the field
    text = toast(page)
    assert "does not take IP-Adapter image prompts" in text and "Traceback" not in text
    close_toasts(page)
    page.reload()  # the next tests start from a fresh page, without the image prompt (the login cookie stays)
    page.locator("#prompt textarea").wait_for()


def test_a_bad_value_is_a_message_not_a_traceback(page):
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#width input").fill("33")
    page.locator("#generate").click()
    text = toast(page)
    assert "divisible by 8" in text and "`Width`" in text and "Traceback" not in text
    # the status line says so too: never an old "Done" beside a refusal
    page.locator("#status").get_by_text(re.compile(r"Error: .*divisible by 8")).wait_for()
    close_toasts(page)
    page.locator("#width input").fill("64")


def test_results_sit_beside_the_controls_on_a_wide_screen(page):
    page.get_by_role("tab", name="Generate").click()
    prompt, gallery = page.locator("#prompt").bounding_box(), page.locator("#gallery").bounding_box()
    assert gallery["x"] > prompt["x"] + prompt["width"] - 1, "the gallery is in the column beside the controls"
    assert gallery["y"] < 900, "and above the fold at 1280x960"


def test_a_long_run_can_be_cancelled_from_the_ui(page, ui_server):
    page.locator("#prompt textarea").fill("a green square at the top on a white background")
    page.locator("#steps input[type=number]").fill("100")
    page.locator("#n input[type=number]").fill("4")
    page.locator("#width input").fill("256")
    page.locator("#height input").fill("256")
    page.locator("#generate").click()
    page.locator("#status").get_by_text(re.compile(r"Step \d+ of 100")).wait_for()
    page.locator("#cancel").click()
    assert "Cancelled" in toast(page)
    close_toasts(page)
    page.locator("#n input[type=number]").fill("1")
    page.locator("#steps input[type=number]").fill("20")
    page.locator("#width input").fill("64")
    page.locator("#height input").fill("64")


def test_a_preset_fills_the_size_and_a_typed_size_is_what_is_made(page, ui_server):
    """An aspect preset shows its width and height; typing a size makes the preset custom, so the typed size is the
    one made (a preset never overrides it unseen)."""
    page.get_by_role("tab", name="Generate").click()
    page.locator("#aspect input").click()
    page.get_by_role("option", name="4:3").click()
    page.wait_for_function("document.querySelector('#width input').value === '320'"
                           " && document.querySelector('#height input').value === '240'")
    page.locator("#width input").fill("64")
    page.locator("#height input").fill("64")
    page.wait_for_function("document.querySelector('#aspect input').value === 'custom'")
    page.locator("#prompt textarea").fill("a small blue circle in the center on a white background")
    page.locator("#steps input[type=number]").fill("4")
    page.locator("#generate").click()
    page.locator("#status").get_by_text("Done").wait_for(timeout=240_000)
    assert (history(ui_server)[0]["width"], history(ui_server)[0]["height"]) == (64, 64)


def test_compare_across_styles_says_when_the_model_ignores_them(page):
    """The built-in model draws shapes, not styles: the grid's cells are the same picture, and the status line says
    so and why. "watercolor" is the preset "watercolour"."""
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-axis").get_by_text("styles").click()
    page.wait_for_function("document.querySelector('#compare-values textarea, #compare-values input').value"
                           ".startsWith('photo')")
    page.locator("#compare-prompt textarea, #compare-prompt input").first.fill("a red circle on a blue background")
    page.locator("#compare-values textarea, #compare-values input").first.fill("watercolor, photo")
    page.get_by_label("Width").last.fill("64")
    page.get_by_label("Height").last.fill("64")
    page.locator("#compare-go").click()
    page.locator("#compare-status").get_by_text(re.compile("2 images, one per style")).wait_for()
    status = page.locator("#compare-status").inner_text()
    assert "the images are all the same" in status and "watercolour" in status, status
    page.locator("#compare-axis").get_by_text("seeds").click()


def test_compare_grid_across_seeds(page, shots):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea, #compare-prompt input").first.fill(
        "a large blue square on the right on a yellow background")
    page.locator("#compare-values textarea, #compare-values input").first.fill("1, 2, 3, 4")
    page.get_by_label("Width").last.fill("256")
    page.get_by_label("Height").last.fill("256")
    page.locator("#compare-go").click()
    page.locator("#compare-status").get_by_text("4 images, one per seed").wait_for()
    assert page.locator("#compare-grid").get_by_text("seed: 3").count() >= 1
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def test_compare_offers_each_axis_own_values_and_refuses_unknown_ones(page):
    page.get_by_role("tab", name="Compare").click()
    values = page.locator("#compare-values textarea, #compare-values input").first
    page.locator("#compare-axis").get_by_text("styles").click()
    page.wait_for_function("document.querySelector('#compare-values textarea, #compare-values input').value"
                           ".startsWith('photo')")
    page.locator("#compare-axis").get_by_text("models").click()
    page.wait_for_function("document.querySelector('#compare-values textarea, #compare-values input').value"
                           ".includes('builtin')")
    page.locator("#compare-axis").get_by_text("styles").click()
    page.wait_for_function("document.querySelector('#compare-values textarea, #compare-values input').value"
                           ".startsWith('photo')")
    values.fill("photo, 2")
    page.locator("#compare-go").click()
    assert "Unknown style '2'" in toast(page)
    page.locator("#compare-status").get_by_text(re.compile("Error: Unknown style")).wait_for()
    close_toasts(page)
    page.locator("#compare-axis").get_by_text("seeds").click()
    page.wait_for_function("document.querySelector('#compare-values textarea, #compare-values input').value"
                           " === '1, 2, 3, 4'")


def test_inpainting_and_variations_have_their_own_strength(page):
    page.get_by_role("tab", name="Edit").click()
    inpaint = page.locator("#inpaint-strength input[type=number]").input_value()
    vary = page.locator("#variation-strength input[type=number]").input_value()
    assert float(inpaint) == 1.0 and 0.5 <= float(vary) <= 0.6
    assert page.locator("#mask-blur input[type=number]").input_value() == "4"


def test_inpainting_edit_repaints_only_the_painted_part(page, ui_server, shots, tmp_path):
    source = Image.new("RGB", (64, 64), (20, 20, 200))
    source.save(tmp_path / "in.png")
    page.get_by_role("tab", name="Edit").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#editor").get_by_text("Upload an image").click()
    chooser.value.set_files(str(tmp_path / "in.png"))
    page.wait_for_timeout(1500)
    box = page.locator("#editor canvas").first.bounding_box()
    left, top = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3  # a stroke on the left half
    page.mouse.move(left, top)
    page.mouse.down()
    for i in range(12):
        page.mouse.move(left + (i % 2) * 6, top + i * 10)
    page.mouse.up()
    page.locator("#edit-prompt textarea, #edit-prompt input").first.fill(
        "a large red circle at the top on a blue background")
    page.locator("#inpaint").click()
    page.locator("#edit-status").get_by_text("Done").wait_for()
    page.locator("#edit-gallery img").first.wait_for()
    page.screenshot(path=str(shots / "edit.png"), full_page=True)
    row = history(ui_server)[0]
    assert json.loads(row["parameters"])["mode"] == "edit" and (row["width"], row["height"]) == (64, 64)
    result = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.int16)
    kept = np.abs(result[:, 48:] - np.asarray(source, dtype=np.int16)[:, 48:]).mean()
    assert kept < 4, "the unpainted right side is kept"
    assert np.abs(result[:, 16:30] - np.asarray(source, dtype=np.int16)[:, 16:30]).mean() > 4, "the stroke is not"


def test_history_search_reopen_and_edit(page, shots):
    page.get_by_role("tab", name="History").click()
    page.locator("#history-search textarea, #history-search input").first.fill("red circle on the left")
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.wait_for()
    page.locator("#history-gallery img").first.click()
    page.locator("#history-metadata").get_by_text("red circle on the left").first.wait_for()
    assert page.locator("#history-gallery .preview").count() == 0, "no enlarged copy drawn over the grid"
    page.screenshot(path=str(shots / "history.png"), full_page=True)
    page.locator("#history-reopen").click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.includes('red circle on the left')")
    assert page.locator("#seed input").input_value() == "7"
    assert page.locator("#width input").input_value() == "256", "the image's own size, not the model's default"


def test_a_hires_image_reopens_with_its_hires_fix_and_edits_with_its_model(page, ui_server):
    """A hires image's metadata shows the size made (its first pass under `hires`); "Open in Generate" brings its
    hires settings back; "Edit this image" picks the model that made it."""
    from gradio_client import Client

    client = Client(f"{ui_server.base}/ui/", auth=("me", KEY), verbose=False)
    images, status, meta = client.predict(
        prompt="a yellow square at the bottom on a green background", negative="", model="builtin",
        aspect="custom", width=64, height=64, steps=3, guidance=4, seed=11, n=1, hires_scale=1.5,
        hires_upscaler="bicubic", hires_strength=0.4, hires_steps=2, api_name="/generate")
    assert (meta["width"], meta["height"]) == (96, 96) and meta["hires"]["first_pass_size"] == "64x64"
    page.get_by_role("tab", name="History").click()
    page.locator("#history-search textarea, #history-search input").first.fill("yellow square at the bottom")
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.click()
    page.locator("#history-metadata").get_by_text("yellow square at the bottom").first.wait_for()
    page.locator("#history-reopen").click()
    page.locator("#hires").get_by_text("Hires fix").first.click()  # its panel, folded away until opened
    page.wait_for_function("document.querySelector('#hires-scale input[type=number]')?.value === '1.5'")
    assert page.locator("#hires-strength input[type=number]").input_value() == "0.4"
    assert page.locator("#width input").input_value() == "64"
    page.get_by_role("tab", name="History").click()
    page.locator("#history-edit").click()
    page.wait_for_function("document.querySelector('#edit-model input')?.value === 'builtin'")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#hires").get_by_text("Hires fix").first.click()


def test_the_ui_api_through_gradio_client(ui_server):
    from gradio_client import Client

    client = Client(f"{ui_server.base}/ui/", auth=("me", KEY), verbose=False)
    images, status, meta = client.predict(
        prompt="a small white triangle in the center on a black background", negative="", model="builtin",
        aspect="custom", width=64, height=64, steps=10, guidance=4, seed=3, n=2, api_name="/generate")
    assert len(images) == 2 and status.startswith("Done") and meta["seed"] == 3
    images, status, meta = client.predict(
        prompt="a small white triangle in the center on a black background", negative="", model="builtin",
        aspect="custom", width=64, height=64, steps=4, guidance=4, seed=20, n=2, batches=3, api_name="/generate")
    assert [im["caption"] for im in images] == [f"seed {s} · 64x64" for s in range(20, 26)]
    assert Image.open(images[0]["image"]).size == (64, 64)
    grid, note = client.predict(prompt="a red circle", axis="seeds", values="5, 6", model="builtin", seed=0,
                                width=64, height=64, api_name="/compare")
    assert [g["caption"] for g in grid] == ["seed: 5", "seed: 6"]
    grid, _ = client.predict(prompt="a red circle", axis="styles", values="photo, sketch", model="builtin", seed=0,
                             width=64, height=64, api_name="/compare")
    assert [g["caption"] for g in grid] == ["style: photo", "style: sketch"]
    with pytest.raises(Exception, match="divisible by 8"):
        client.predict(prompt="x", negative="", model="builtin", aspect="custom", width=33, height=64, steps=10,
                       guidance=4, seed=1, n=1, api_name="/generate")
    images, status, meta = client.predict(
        prompt="a small white triangle in the center on a black background", negative="", model="builtin",
        aspect="custom", width=64, height=64, steps=4, guidance=4, seed=1, n=1, hires_scale=2, hires_strength=0.5,
        api_name="/generate")
    assert Image.open(images[0]["image"]).size == (128, 128) and meta["hires"]["scale"] == 2
    from gradio_client import handle_file
    from PIL import ImageDraw

    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).rectangle([16, 16, 48, 48], outline="black", width=3)
    picture.save(ui_server.home / "control.png")
    edges = np.asarray(Image.open(client.predict(image=handle_file(str(ui_server.home / "control.png")),
                                                 preprocessor="canny", api_name="/control_map")).convert("L"))
    assert set(np.unique(edges)) == {0, 255} and edges[13:21, 32].max() == 255 and edges[32, 32] == 0


def test_the_browser_asked_for_nothing_the_server_lacks(page):
    """Over every test above, no resource answered 404 (the site's icon included)."""
    assert page.missing == [], page.missing
